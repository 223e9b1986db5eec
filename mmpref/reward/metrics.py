"""Preference metrics shared by every system: pairwise accuracy (ties count ½), calibration, Kendall's τ."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def pairwise_accuracy(prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-pair accuracy of P(a ≻ b) against a label P(a ≻ b); a tie on either side counts ½.

    Args:
        prob: predicted probabilities, ``[N]``.
        label: labels in [0, 1], ``[N]``; 0.5 is a tie.

    Returns:
        ``[N]`` values in {0, ½, 1}.
    """
    predicted = torch.sign(prob - 0.5)
    observed = torch.sign(label.to(prob.dtype) - 0.5)
    agree = (predicted * observed + 1) / 2  # 1 if same side, 0 if opposite sides
    return torch.where((predicted == 0) | (observed == 0), torch.full_like(agree, 0.5), agree)


class PairwiseCalibrationError(Metric):
    r"""Expected calibration error of P(a ≻ b), top-label form, with soft labels.

    For each pair the confidence is c = max(p, 1 − p) and the (expected) correctness is the label of the predicted
    side, y if p ≥ ½ else 1 − y. Pairs are binned by c in equal-width bins over [½, 1] and

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{N} \left| \overline{c}_b - \overline{\mathrm{correct}}_b \right|

    Guo et al. (2017), "On Calibration of Modern Neural Networks", eq. 3, for the binary case. Sums are kept per bin
    so that the value is exact over an epoch and across processes (states are summed under DDP).
    """

    full_state_update = False

    def __init__(self, n_bins: int = 10):
        super().__init__()
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.add_state("confidence_sum", default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct_sum", default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prob: torch.Tensor, label: torch.Tensor) -> None:
        """Add pairs: predicted P(a ≻ b) ``[N]`` and labels ``[N]``."""
        prob = prob.detach().to(torch.float64).flatten()
        label = label.detach().to(torch.float64).flatten()
        confidence = torch.maximum(prob, 1 - prob)
        correct = torch.where(prob >= 0.5, label, 1 - label)
        bins = ((confidence - 0.5) * 2 * self.n_bins).long().clamp(0, self.n_bins - 1)
        self.confidence_sum.index_add_(0, bins, confidence)
        self.correct_sum.index_add_(0, bins, correct)
        self.count.index_add_(0, bins, torch.ones_like(confidence))

    def compute(self) -> torch.Tensor:
        """The ECE over everything added so far (0 when nothing was added)."""
        total = self.count.sum().clamp_min(1)
        return ((self.confidence_sum - self.correct_sum).abs().sum() / total).to(torch.float32)

    def reliability(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-bin mean confidence, mean correctness and counts, for a reliability diagram."""
        safe = self.count.clamp_min(1)
        return self.confidence_sum / safe, self.correct_sum / safe, self.count


def kendall_tau(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Kendall's τ-a between model scores and targets, per list; pairs tied in the targets are left out.

    Args:
        scores: ``[B, K]``.
        targets: ``[B, K]``, higher = better.
        mask: valid entries ``[B, K]``; ``None`` means all valid.

    Returns:
        ``[B]``: (concordant − discordant) / compared pairs, 0 for a list with no comparable pair.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    ds = scores[:, :, None] - scores[:, None, :]
    dt = targets[:, :, None] - targets[:, None, :]
    valid = mask[:, :, None] & mask[:, None, :] & (dt != 0)
    sign = torch.sign(ds) * torch.sign(dt)
    compared = valid.sum((-1, -2)).clamp_min(1)
    return torch.where(valid, sign, torch.zeros_like(sign)).sum((-1, -2)) / compared
