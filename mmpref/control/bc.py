"""Behaviour cloning of a :class:`~mmpref.control.policies.GaussianPolicy`: maximum likelihood of demonstrated actions.

ℓ = −(1/N) Σ_i log π_θ(a_i | s_i), trained through Lightning (:class:`BehaviourCloning`) on the accelerator of the
given :class:`~mmpref.reward.trainers.TrainerSettings`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mmpref.control.policies import GaussianPolicy
from mmpref.reward.trainers import TrainerSettings, quick_trainer, quiet_lightning

logger = logging.getLogger(__name__)


class BehaviourCloning(L.LightningModule):
    """Maximum-likelihood behaviour cloning: loss = mean over steps of −log π(a|s).

    Args:
        policy: the policy to train.
        lr: Adam learning rate.
        weight_decay: Adam (decoupled, AdamW) weight decay.
    """

    def __init__(self, policy: GaussianPolicy, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.policy = policy
        self.lr, self.weight_decay = lr, weight_decay

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Negative log-likelihood of a batch of (observation, action) pairs."""
        obs, actions = batch
        loss = -self.policy.log_prob(obs, actions).mean()
        self.log("train/loss", loss, prog_bar=False, batch_size=len(obs))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW on the policy's parameters."""
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class BCResult:
    """What :func:`behaviour_cloning` reports: the demonstrations' mean log-likelihood before and after."""

    log_likelihood_before: float
    log_likelihood_after: float
    transitions: int


def behaviour_cloning(
    policy: GaussianPolicy,
    observations: np.ndarray,
    actions: np.ndarray,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    fit_normalizer: bool = True,
    trainer: TrainerSettings | None = None,
) -> BCResult:
    """Train ``policy`` in place by behaviour cloning on transitions ``[N, o]``, ``[N, a]``.

    Args:
        policy: the policy (its normaliser is set from ``observations`` if ``fit_normalizer``).
        observations: demonstration observations, ``[N, obs_dim]``.
        actions: demonstration actions in [-1, 1], ``[N, act_dim]``.
        epochs: passes over the data.
        batch_size: transitions per step.
        lr: Adam learning rate.
        weight_decay: AdamW weight decay.
        seed: seeds the shuffling.
        fit_normalizer: set the observation normaliser from the data first.
        trainer: where to train (default :class:`~mmpref.reward.trainers.TrainerSettings`: the accelerator there is).
    """
    obs = np.asarray(observations, np.float32)
    act = np.asarray(actions, np.float32)
    if obs.ndim != 2 or act.ndim != 2 or len(obs) != len(act):
        raise ValueError(f"need observations [N, o] and actions [N, a] of equal N, got {obs.shape} and {act.shape}")
    if len(obs) == 0:
        raise ValueError("no demonstration transitions to clone")
    if not np.isfinite(obs).all() or not np.isfinite(act).all():
        raise ValueError("demonstrations contain NaN or infinite values")
    if np.abs(act).max() > 1.0 + 1e-6:
        raise ValueError(f"actions must lie in [-1, 1], got max |a| = {np.abs(act).max():.3f}")
    if fit_normalizer:
        policy.set_normalizer(obs)
    obs_t, act_t = torch.from_numpy(obs), torch.from_numpy(act)

    def mean_log_likelihood() -> float:
        with torch.no_grad():
            return float(policy.log_prob(obs_t, act_t).mean())

    before = mean_log_likelihood()
    quiet_lightning()
    loader = DataLoader(
        TensorDataset(obs_t, act_t),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    quick_trainer(epochs, trainer).fit(BehaviourCloning(policy, lr, weight_decay), train_dataloaders=loader)
    policy.eval()
    after = mean_log_likelihood()
    logger.info("behaviour cloning on %d transitions: log-likelihood %.3f -> %.3f", len(obs), before, after)
    return BCResult(before, after, len(obs))
