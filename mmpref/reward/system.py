"""The generic reward-model system: learn a scalar score from features with any loss of the core."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from mmpref.losses import LossName, get_loss, is_listwise, soft_pairwise
from mmpref.reward.metrics import PairwiseCalibrationError, kendall_tau, pairwise_accuracy

Batch = dict[str, torch.Tensor]


def _ordered_pairs(targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (list, better item, worse item) of every strictly ordered pair of valid items in ``[B, K]`` lists."""
    better = (targets[:, :, None] > targets[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    return better.nonzero(as_tuple=True)


class RewardModelSystem(L.LightningModule):
    """Reward model r(x): a scorer network trained on pairs or ranked lists with a loss chosen by name.

    Pair batches ``{"x_a", "x_b", "label"}`` and list batches ``{"x", "targets", "mask"}`` both work with both loss
    kinds: a pairwise loss on a list is applied to every ordered pair of the list (RankNet-style); a listwise loss on
    a pair sees a two-item list. Soft labels (ties = 0.5) use the label-weighted mixture of both orders
    (:func:`mmpref.losses.soft_pairwise`), which for Bradley-Terry is the soft cross-entropy.

    The model's preference probability is P(a ≻ b) = σ(β(r(a) − r(b))); accuracy (ties count ½) and the expected
    calibration error of that probability are logged as ``{stage}/accuracy`` and ``{stage}/ece``, with
    ``{stage}/loss``, ``{stage}/margin`` (mean r(w) − r(l)), ``{stage}/score_w``, ``{stage}/score_l``, and for lists
    ``{stage}/kendall_tau``.

    Args:
        scorer: network mapping features ``[..., D]`` to scores ``[...]``; an ensemble scorer maps them to
            ``[M, ...]`` (M members trained in one fused pass, each on its own loss; a pair batch may carry
            ``weight``, ``[B]`` or ``[B, M]``, e.g. bootstrap counts per member).
        loss: name of a pairwise or listwise loss in :mod:`mmpref.losses`.
        beta: the loss's inverse temperature β (for IPO, its regularisation).
        loss_kwargs: extra arguments of the loss (e.g. ``{"eps": 0.1}`` for robust, ``{"margin": 0.5}``,
            ``{"skip": 2}`` for RankList).
        optimizer: optimiser factory taking the parameters.
        calibration_bins: number of bins of the calibration error.
    """

    def __init__(
        self,
        scorer: nn.Module,
        loss: LossName = "bradley_terry",
        beta: float = 1.0,
        loss_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        calibration_bins: int = 10,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["scorer", "optimizer"])
        self.scorer = scorer
        self.loss_fn = get_loss(loss)  # raises a ValueError listing valid names
        self.listwise = is_listwise(loss)
        self.beta = beta
        self.loss_kwargs = dict(loss_kwargs or {})
        self.optimizer_factory = optimizer
        # One calibration accumulator per stage (an nn.ModuleDict cannot use the key "train").
        self.train_ece = PairwiseCalibrationError(calibration_bins)
        self.val_ece = PairwiseCalibrationError(calibration_bins)
        self.test_ece = PairwiseCalibrationError(calibration_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score items: features ``[..., D]`` → scores ``[...]``."""
        return self.scorer(x)

    def preference_probability(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """P(a ≻ b) = σ(β(r(a) − r(b))) for features ``[B, D]`` each."""
        return torch.sigmoid(self.beta * (self(x_a) - self(x_b)))

    # --- losses on the two batch layouts -------------------------------------------------------------------------

    def _ordered_pair_loss(self, score_w: torch.Tensor, score_l: torch.Tensor) -> torch.Tensor:
        """The chosen loss for pairs with a hard label (w preferred), per pair."""
        if self.listwise:
            scores = torch.stack([score_w, score_l], dim=-1)
            targets = torch.tensor([1.0, 0.0], device=scores.device).expand_as(scores)
            return self.loss_fn(scores, targets, beta=self.beta, **self.loss_kwargs)
        return self.loss_fn(score_w, score_l, beta=self.beta, **self.loss_kwargs)

    def _list_loss(self, scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The chosen loss for ranked lists, per list."""
        if self.listwise:
            return self.loss_fn(scores, targets, mask, beta=self.beta, **self.loss_kwargs)
        # Pairwise loss on every ordered pair (i better than j) of the list, summed per list.
        b, i, j = _ordered_pairs(targets, mask)
        per_pair = self._ordered_pair_loss(scores[b, i], scores[b, j])
        return scores.new_zeros(scores.shape[0], dtype=per_pair.dtype).index_add(0, b, per_pair)

    def _shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        if "x_a" in batch:
            score_a, score_b = self(batch["x_a"]), self(batch["x_b"])
            label = batch["label"].to(score_a.dtype)
            per_pair = soft_pairwise(self._ordered_pair_loss, score_a, score_b, label)  # [B], or [M, B]
            weight = batch.get("weight")  # bootstrap counts / importance weights, [B] or [B, M]
            if weight is None:
                loss = per_pair.mean()
            else:  # weighted mean per member, then the members' mean
                weight = weight.to(per_pair.dtype)
                if weight.dim() == 2:  # [B, M] rows of a dataset -> [M, B], like the ensemble's losses
                    weight = weight.T
                loss = ((per_pair * weight).sum(-1) / weight.sum(-1).clamp_min(1e-12)).mean()
            if score_a.dim() == 2:  # an ensemble scorer ([members, B]): metrics describe the members' mean
                score_a, score_b = score_a.mean(0), score_b.mean(0)
            flip = label < 0.5  # orient each pair as (preferred, rejected) for the logged scores
            score_w, score_l = torch.where(flip, score_b, score_a), torch.where(flip, score_a, score_b)
            prob, pair_label = torch.sigmoid(self.beta * (score_a - score_b)), label
        elif "x" in batch:
            scores = self(batch["x"])
            targets, mask = batch["targets"].to(scores.dtype), batch["mask"].bool()
            loss = self._list_loss(scores, targets, mask).mean()
            b, i, j = _ordered_pairs(targets, mask)
            score_w, score_l = scores[b, i], scores[b, j]
            prob, pair_label = torch.sigmoid(self.beta * (score_w - score_l)), torch.ones_like(score_w)
            self.log(
                f"{stage}/kendall_tau",
                kendall_tau(scores.detach(), targets, mask).mean(),
                sync_dist=True,
                batch_size=scores.shape[0],
            )
        else:
            raise KeyError(
                f"batch keys {sorted(batch)} are neither a pair batch (x_a, x_b, label) nor a list batch "
                "(x, targets, mask)"
            )
        size = int(prob.shape[0])
        calibration = getattr(self, f"{stage}_ece")
        calibration.update(prob, pair_label)
        log = dict(sync_dist=True, batch_size=size)
        self.log(f"{stage}/loss", loss, prog_bar=True, **log)
        self.log(f"{stage}/accuracy", pairwise_accuracy(prob.detach(), pair_label).mean(), prog_bar=True, **log)
        self.log(f"{stage}/margin", (score_w - score_l).detach().mean(), **log)
        self.log(f"{stage}/score_w", score_w.detach().mean(), **log)
        self.log(f"{stage}/score_l", score_l.detach().mean(), **log)
        self.log(f"{stage}/ece", calibration, on_step=False, on_epoch=True, batch_size=size)
        return loss

    # --- Lightning hooks, in Lightning's order -------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Loss on a training batch (pairs or lists), with metrics logged under ``train/``."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Metrics on a validation batch, under ``val/``."""
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Metrics on a test batch, under ``test/``."""
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch | torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Scores of items: a tensor ``[B, D]`` or a batch with ``"x"``."""
        x = batch["x"] if isinstance(batch, dict) else batch
        return self(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The injected optimiser over all parameters."""
        return self.optimizer_factory(self.parameters())
