"""A unified reward model (UnifiedReward-style) for images and videos.

Pointwise scores per named dimension and pairwise probabilities, trained jointly on pairs, ranked lists and ratings
through the loss core.

Items are sequences of frame embeddings ``[T, D]``; an image is a clip of one frame. The trunk is a
:class:`TemporalHead`: the mean of the projected frames (appearance) plus a motion term computed from frame-to-frame
differences, which a frame-mean model cannot see. One linear head gives a score per dimension (e.g. alignment,
quality, style); the pairwise probability of a dimension is P(a ≻ b) = σ(β(s_d(a) − s_d(b))), consistent with the
pointwise scores by construction. Scores are relative (the losses are shift-invariant).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from mmpref.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES, ListwiseLossName, PairwiseLossName, soft_pairwise
from mmpref.reward.metrics import PairwiseCalibrationError, pairwise_accuracy

Batch = dict[str, torch.Tensor]


class TemporalHead(nn.Module):
    """Frames ``[B, T, D]`` (+ mask ``[B, T]``) → a clip representation ``[B, h]``.

    appearance = mean_t φ(x_t); motion = MLP(mean_t |φ(x_{t+1}) − φ(x_t)|) over consecutive valid frames.
    With ``pooling="mean"`` only the appearance term is used: the frame-mean baseline.

    Args:
        embedding_dim: frame embedding size D.
        hidden: representation size h.
        pooling: ``"temporal"`` (appearance + motion) or ``"mean"`` (appearance only).
    """

    def __init__(self, embedding_dim: int, hidden: int = 128, pooling: Literal["temporal", "mean"] = "temporal"):
        super().__init__()
        if pooling not in ("temporal", "mean"):
            raise ValueError(f"pooling must be 'temporal' or 'mean', got {pooling!r}")
        self.project = nn.Sequential(nn.LayerNorm(embedding_dim), nn.Linear(embedding_dim, hidden), nn.GELU())
        self.motion = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.pooling = pooling

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool a batch of clips into ``[B, h]``."""
        if mask is None:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        x = self.project(frames)
        valid = mask.to(x.dtype).unsqueeze(-1)
        appearance = (x * valid).sum(1) / valid.sum(1).clamp_min(1)
        if self.pooling == "mean" or frames.shape[1] < 2:
            return appearance
        step_valid = valid[:, 1:] * valid[:, :-1]
        steps = (x[:, 1:] - x[:, :-1]).abs() * step_valid
        change = steps.sum(1) / step_valid.sum(1).clamp_min(1)
        return appearance + self.motion(change)


class UnifiedRewardModel(nn.Module):
    """Per-dimension scores for images and videos.

    Args:
        embedding_dim: frame/image embedding size D.
        dimensions: names of the scored dimensions, e.g. ``["overall", "quality", "style"]``.
        hidden: trunk width.
        pooling: ``"temporal"`` or ``"mean"`` (the frame-mean baseline).
    """

    def __init__(
        self,
        embedding_dim: int,
        dimensions: Sequence[str] = ("overall",),
        hidden: int = 128,
        pooling: Literal["temporal", "mean"] = "temporal",
    ):
        super().__init__()
        if not dimensions or len(set(dimensions)) != len(dimensions):
            raise ValueError(f"dimensions must be distinct names, got {list(dimensions)}")
        self.dimensions = list(dimensions)
        self.trunk = TemporalHead(embedding_dim, hidden, pooling)
        self.heads = nn.Linear(hidden, len(self.dimensions))

    def dimension_index(self, name: str) -> int:
        """Index of a named dimension; unknown names list the valid ones."""
        if name not in self.dimensions:
            raise ValueError(f"unknown dimension {name!r}; this model scores {self.dimensions}")
        return self.dimensions.index(name)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, n_dims]`` of clips ``[B, T, D]`` (images: T = 1, or pass ``[B, D]``)."""
        if frames.dim() == 2:
            frames = frames.unsqueeze(1)
        return self.heads(self.trunk(frames, mask))

    def score(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None, dimension: str = "overall"
    ) -> torch.Tensor:
        """Pointwise score ``[B]`` on one dimension."""
        return self(frames, mask)[:, self.dimension_index(dimension)]

    def preference_probability(
        self, frames_a: torch.Tensor, frames_b: torch.Tensor, dimension: str = "overall", beta: float = 1.0
    ) -> torch.Tensor:
        """P(a ≻ b) on one dimension, ``[B]``."""
        return torch.sigmoid(
            beta * (self.score(frames_a, dimension=dimension) - self.score(frames_b, dimension=dimension))
        )


class UnifiedRewardSystem(L.LightningModule):
    """Joint training on any mix of pair, ranked-list and rating batches, each tagged with a dimension index.

    Batches (a dict with any of the keys ``"pairs"``, ``"lists"``, ``"ratings"``, as a ``CombinedLoader`` gives):

    * pairs: ``frames_a``/``frames_b`` ``[B, T, D]`` (+ ``mask_a``/``mask_b``), ``label`` ``[B]``, ``dim`` ``[B]``;
    * lists and ratings: ``frames`` ``[B, K, T, D]`` (+ ``frame_mask`` ``[B, K, T]``), ``targets`` ``[B, K]``,
      ``mask`` ``[B, K]``, ``dim`` ``[B]``.

    Loss = pair loss + list loss + ``rating_weight`` · rating loss, each the mean over its records. Logged:
    ``{stage}/loss``, ``{stage}/accuracy``, ``{stage}/ece`` on pairs, and ``{stage}/unified/<dimension>_accuracy``.

    Args:
        model: the unified reward model.
        pair_loss: pairwise loss of the core.
        list_loss: listwise loss for ranked lists.
        rating_loss: listwise loss for ratings (ListNet: invariant to the ties ratings are full of).
        beta: inverse temperature of the losses.
        rating_weight: weight of the rating term.
        optimizer: optimiser factory.
    """

    def __init__(
        self,
        model: UnifiedRewardModel,
        pair_loss: PairwiseLossName = "bradley_terry",
        list_loss: ListwiseLossName = "plackett_luce",
        rating_loss: ListwiseLossName = "listnet",
        beta: float = 1.0,
        rating_weight: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model
        self.pair_loss_fn = PAIRWISE_LOSSES[pair_loss]
        self.list_loss_fn = LISTWISE_LOSSES[list_loss]
        self.rating_loss_fn = LISTWISE_LOSSES[rating_loss]
        self.optimizer_factory = optimizer
        self.val_ece = PairwiseCalibrationError()

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, n_dims]``."""
        return self.model(frames, mask)

    def _pair_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        pick = batch["dim"].unsqueeze(-1)
        score_a = self.model(batch["frames_a"], batch.get("mask_a")).gather(-1, pick).squeeze(-1)
        score_b = self.model(batch["frames_b"], batch.get("mask_b")).gather(-1, pick).squeeze(-1)
        return score_a, score_b

    def _list_scores(self, batch: Batch) -> torch.Tensor:
        b, k = batch["targets"].shape
        frames = batch["frames"].flatten(0, 1)
        frame_mask = batch.get("frame_mask")
        scores = self.model(frames, None if frame_mask is None else frame_mask.flatten(0, 1)).view(b, k, -1)
        return scores.gather(-1, batch["dim"].view(b, 1, 1).expand(b, k, 1)).squeeze(-1)

    def _losses(self, batch: dict[str, Batch], stage: str) -> torch.Tensor:
        beta, total = self.hparams.beta, 0.0
        if "pairs" in batch:
            pairs = batch["pairs"]
            score_a, score_b = self._pair_scores(pairs)
            pair_loss = soft_pairwise(self.pair_loss_fn, score_a, score_b, pairs["label"], beta=beta).mean()
            total = total + pair_loss
            prob = torch.sigmoid(beta * (score_a - score_b)).detach()
            hits = pairwise_accuracy(prob, pairs["label"])
            size = len(prob)
            self.log(f"{stage}/accuracy", hits.mean(), prog_bar=True, batch_size=size, sync_dist=stage != "train")
            for index, name in enumerate(self.model.dimensions):
                chosen = pairs["dim"] == index
                if chosen.any():
                    self.log(
                        f"{stage}/unified/{name}_accuracy",
                        hits[chosen].mean(),
                        batch_size=int(chosen.sum()),
                        sync_dist=stage != "train",
                    )
            if stage == "val":
                self.val_ece.update(prob, pairs["label"])
                self.log("val/ece", self.val_ece, on_epoch=True, batch_size=size)
        for key, fn, weight in (
            ("lists", self.list_loss_fn, 1.0),
            ("ratings", self.rating_loss_fn, self.hparams.rating_weight),
        ):
            if key in batch:
                part = batch[key]
                loss = fn(self._list_scores(part), part["targets"], part.get("mask"), beta=beta).mean()
                self.log(
                    f"{stage}/unified/{key}_loss", loss, batch_size=len(part["targets"]), sync_dist=stage != "train"
                )
                total = total + weight * loss
        self.log(f"{stage}/loss", total, prog_bar=True, sync_dist=stage != "train")
        return total

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> torch.Tensor:
        """Joint loss over whichever record types the batch holds."""
        return self._losses(batch, "train")

    def validation_step(self, batch: dict[str, Batch] | Batch, batch_idx: int) -> None:
        """Validation pairs (a plain pair batch is accepted too)."""
        self._losses(batch if "pairs" in batch or "lists" in batch else {"pairs": batch}, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The injected optimiser over all parameters."""
        return self.optimizer_factory(self.parameters())
