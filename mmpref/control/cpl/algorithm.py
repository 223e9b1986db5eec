r"""Contrastive Preference Learning (CPL): a policy learned from segment preferences directly, without RL.

Hejna et al. (2024), "Contrastive Preference Learning: Learning from Human Feedback without RL", eq. 5 and §4
(conservative variant). Under the regret preference model with the optimal advantage A* = α log π*(a|s) (maximum
entropy RL), the probability that segment σ⁺ is preferred to σ⁻ is a Bradley-Terry model on policy scores:

.. math::
    \mathcal L_{CPL(\lambda)} = -\log \frac{\exp S^+}{\exp S^+ + \exp(\lambda S^-)}
    \quad S^\pm = \sum_t \alpha \log \pi(a^\pm_t \mid s^\pm_t),\qquad \text{i.e.}\ \mathcal L
    = \mathrm{BT}\big(\text{score}_w,\ \lambda\,\text{score}_l\big),\qquad \text{score} = \sum_t \alpha\log\pi(a_t|s_t)

with α = 0.1 and the conservative bias λ = 0.5 (the paper's defaults; λ < 1 shrinks the loser's score, which keeps
the policy from raising a winner's likelihood only by pushing losers' likelihoods down). As in the paper, the policy
is first warmed up by behaviour cloning on all segments (:func:`mmpref.control.bc.behaviour_cloning`); an
optional BC term (``bc_weight``) keeps regularising during CPL. The loss is the shared core's
:func:`~mmpref.losses.bradley_terry`; the policy network lives in :mod:`mmpref.control.policies`.

Data: labelled :class:`~mmpref.data.SegmentPair` records, e.g. read from a robomimic HDF5 file written by mmpref
(:func:`mmpref.control.robomimic_io.read_preference_pairs`); ties (label 0.5) carry no preference and are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mmpref.control.policies import GaussianPolicy
from mmpref.data import SegmentPair
from mmpref.losses import bradley_terry
from mmpref.reward.trainers import TrainerSettings, quick_trainer, quiet_lightning

logger = logging.getLogger(__name__)


def cpl_scores(policy: GaussianPolicy, obs: torch.Tensor, actions: torch.Tensor, alpha: float) -> torch.Tensor:
    """score(σ) = Σ_t α log π(a_t|s_t): ``[B, T, o]``, ``[B, T, a]`` → ``[B]`` (Hejna et al. 2024, eq. 5)."""
    return alpha * policy.segment_log_prob(obs, actions)


class CPLSystem(L.LightningModule):
    """CPL on oriented segment pairs: a batch is (obs_w, act_w, obs_l, act_l), winner first.

    Args:
        policy: the Gaussian policy π (warmed up by behaviour cloning beforehand).
        alpha: temperature α of the score Σ α log π (paper: 0.1).
        conservative_bias: λ ∈ (0, 1] multiplying the loser's score (paper: 0.5; 1 = plain CPL).
        bc_weight: weight of an extra behaviour-cloning term −mean log π over both segments (0 = off).
        lr: AdamW learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        policy: GaussianPolicy,
        alpha: float = 0.1,
        conservative_bias: float = 0.5,
        bc_weight: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not 0 < conservative_bias <= 1:
            raise ValueError(f"conservative_bias λ must lie in (0, 1], got {conservative_bias}")
        if bc_weight < 0:
            raise ValueError(f"bc_weight must be >= 0, got {bc_weight}")
        self.save_hyperparameters(ignore=["policy"])
        self.policy = policy

    def _step(self, batch: Sequence[torch.Tensor], stage: str) -> torch.Tensor:
        obs_w, act_w, obs_l, act_l = batch
        hp = self.hparams
        score_w = cpl_scores(self.policy, obs_w, act_w, hp.alpha)
        score_l = cpl_scores(self.policy, obs_l, act_l, hp.alpha)
        loss = bradley_terry(score_w, hp.conservative_bias * score_l).mean()
        if hp.bc_weight > 0:
            steps = obs_w.shape[1] + obs_l.shape[1]
            bc_nll = -(score_w + score_l).mean() / (hp.alpha * steps)
            self.log(f"{stage}/cpl/bc_nll", bc_nll, batch_size=len(obs_w))
            loss = loss + hp.bc_weight * bc_nll
        margin = score_w - score_l
        accuracy = (margin > 0).float() + 0.5 * (margin == 0).float()
        size = len(obs_w)
        self.log(f"{stage}/loss", loss, batch_size=size)
        self.log(f"{stage}/accuracy", accuracy.mean(), batch_size=size)
        self.log(f"{stage}/margin", margin.mean(), batch_size=size)
        self.log(f"{stage}/score_w", score_w.mean(), batch_size=size)
        self.log(f"{stage}/score_l", score_l.mean(), batch_size=size)
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """CPL(λ) loss on a batch of oriented pairs."""
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        """Loss and pair accuracy of the policy's scores on held-out pairs."""
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW on the policy."""
        return torch.optim.AdamW(self.policy.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def oriented_pairs(pairs: Sequence[SegmentPair]) -> TensorDataset:
    """(obs_w, act_w, obs_l, act_l) tensors ``[N, T, ·]`` with the preferred segment first; ties are dropped.

    Raises:
        ValueError: when no pair carries a preference, or segments differ in length across pairs.
    """
    kept = [p for p in pairs if p.label != 0.5]
    if not kept:
        raise ValueError(f"none of the {len(pairs)} pairs carries a preference (all labels are 0.5)")
    lengths = {len(p.a) for p in kept}
    if len(lengths) != 1:
        raise ValueError(f"CPL batches need one segment length; got lengths {sorted(lengths)}")
    if len(kept) < len(pairs):
        logger.info("CPL: dropped %d tied pairs of %d", len(pairs) - len(kept), len(pairs))
    winners = [p.a if p.label > 0.5 else p.b for p in kept]
    losers = [p.b if p.label > 0.5 else p.a for p in kept]

    def stack(segments: list, field: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([getattr(s, field) for s in segments]), dtype=torch.float32)

    return TensorDataset(
        stack(winners, "observations"),
        stack(winners, "actions"),
        stack(losers, "observations"),
        stack(losers, "actions"),
    )


def train_cpl(
    policy: GaussianPolicy,
    pairs: Sequence[SegmentPair],
    steps: int,
    batch_size: int = 32,
    seed: int = 0,
    trainer: TrainerSettings | None = None,
    **system_kwargs: float,
) -> dict[str, float]:
    """Train ``policy`` in place with CPL for ``steps`` gradient steps; returns the last logged train metrics.

    Args:
        policy: the (behaviour-cloned) policy.
        pairs: labelled segment pairs (ties dropped).
        steps: optimiser steps.
        batch_size: pairs per step.
        seed: seeds the shuffling.
        trainer: where to train (default :class:`~mmpref.reward.trainers.TrainerSettings`: the accelerator there is).
        **system_kwargs: :class:`CPLSystem` arguments (``alpha``, ``conservative_bias``, ``bc_weight``, ``lr``...).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dataset = oriented_pairs(pairs)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    system = CPLSystem(policy, **system_kwargs)
    quiet_lightning()
    fit = quick_trainer(-1, trainer, max_steps=steps)
    policy.train()
    fit.fit(system, train_dataloaders=loader)
    policy.eval()
    return {k: float(v) for k, v in fit.callback_metrics.items()}
