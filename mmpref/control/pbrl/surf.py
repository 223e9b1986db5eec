r"""SURF: semi-supervised reward learning with temporal-cropping augmentation, as a part of the PbRL loop.

Park, Seo, Shin, Lee, Abbeel & Lee (2022), "SURF: Semi-supervised Reward Learning with Data Augmentation for
Feedback-efficient Preference-based Reinforcement Learning" (ICLR 2022), §4.

**Pseudo-labels** (§4.1). For an unlabelled pair (σ⁰, σ¹) each member m predicts
P_m = P_ψm[σ¹ ≻ σ⁰] = σ(Σ_t r̂_m(σ¹_t) − Σ_t r̂_m(σ⁰_t)) on the uncropped (central) window; the pair gets the
pseudo-label ŷ = 1[P_m > ½] only when the prediction is confident, max(P_m, 1 − P_m) ≥ τ. The loss of a member is

.. math:: \mathcal L = \mathcal L^{CE}(\mathcal D_l) + \lambda\,
   \mathbb E_{\sigma \sim \mathcal D_u}\big[\mathbb 1(\max(P_m, 1 - P_m) \ge \tau)\,
   \mathcal L^{CE}(\sigma, \hat y)\big]

with μ unlabelled pairs per labelled pair in a minibatch (the expectation averages over all μB unlabelled pairs, the
masked ones contributing 0). Here ``P_m`` is written for the pair (a, b) as P(a ≻ b); the rule is symmetric.

**Temporal cropping** (§4.2). Segments are stored ``H + 2w`` steps long (w = ``window``); the teacher labels the
central H steps. Each time a pair is used for training, one length H' ~ U{H − c, …, H + c} is drawn for the pair and
two independent start offsets k⁰, k¹ ~ U{0, …, H + 2w − H'}, and the segments' scores are the sums of r̂ over
[k⁰, k⁰ + H') and [k¹, k¹ + H') (same length, different times): the label of the pair should not depend on a few
steps at either end. Both labelled and unlabelled pairs are cropped; the pseudo-label comes from the uncropped central
window.

Defaults follow the authors' public configuration (τ = 0.95, λ = 1, μ = 1, 10 unlabelled pairs gathered per label,
w = c = 5). The update runs through the reward LightningModule (:class:`SURFSystem`, which shares the ensemble's
scorer, so training it trains the ensemble); a segment's score here is its undiscounted predicted return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmpref.control.reward import segment_features
from mmpref.data import Segment, SegmentPair
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import quick_trainer

if TYPE_CHECKING:
    from mmpref.control.pbrl.loop import PbRLLoop


def pseudo_labels(prob: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SURF's pseudo-label rule: ŷ = 1[P(a ≻ b) > ½], kept where max(P, 1 − P) ≥ τ.

    Args:
        prob: predicted P(a ≻ b), any shape.
        tau: the confidence threshold τ ∈ (½, 1].

    Returns:
        (labels, mask): hard labels in {0, 1} as floats and a boolean mask of confident pairs, both ``prob``'s shape.

    >>> pseudo_labels(torch.tensor([0.99, 0.3, 0.02, 0.96]), 0.95)
    (tensor([1., 0., 0., 1.]), tensor([ True, False,  True,  True]))
    """
    labels = (prob > 0.5).to(prob.dtype)
    return labels, torch.maximum(prob, 1.0 - prob) >= tau


def crop_masks(
    batch: int, horizon: int, window: int, crop: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SURF's temporal crop: a common length H' ~ U{H − c, …, H + c} per pair and independent start offsets.

    Args:
        batch: pairs B.
        horizon: the labelled length H.
        window: the margin w on each side (stored segments are ``H + 2w`` long).
        crop: the crop range c (``c <= 2w`` so that every H' fits).
        generator: the random source.

    Returns:
        (mask_a, mask_b, lengths): boolean ``[B, H + 2w]`` masks, True on [k, k + H'), and the lengths H' ``[B]``.
    """
    if crop > 2 * window:
        raise ValueError(f"surf_crop ({crop}) must be <= 2 * surf_window ({2 * window}) so every crop fits")
    size = horizon + 2 * window
    lengths = torch.randint(horizon - crop, horizon + crop + 1, (batch,), generator=generator)
    room = size - lengths + 1  # start offsets 0 .. size − H'
    start_a = (torch.rand(batch, generator=generator) * room).long()
    start_b = (torch.rand(batch, generator=generator) * room).long()
    steps = torch.arange(size)
    mask_a = (steps >= start_a[:, None]) & (steps < (start_a + lengths)[:, None])
    mask_b = (steps >= start_b[:, None]) & (steps < (start_b + lengths)[:, None])
    return mask_a, mask_b, lengths


def central(segment: Segment, window: int, horizon: int) -> Segment:
    """The central H steps of an ``H + 2w``-step segment (what the teacher is shown)."""
    end = window + horizon
    return Segment(
        id=segment.id,
        observations=segment.observations[window:end],
        actions=segment.actions[window:end],
        rewards=None if segment.rewards is None else segment.rewards[window:end],
        source=segment.source,
        start=segment.start + window,
    )


class _Minibatches(Dataset):
    """Item k: the k-th minibatch, gathered at once (labelled rows ``labelled[k·B:(k+1)·B]`` and their μ unlabelled).

    Whole minibatches by fancy indexing instead of B single rows collated by the DataLoader: the per-row Python
    overhead was a large part of SURF's update on small reward models.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], labelled: np.ndarray, unlabelled: np.ndarray, batch: int):
        self.tensors, self.batch = tensors, batch
        self.labelled, self.unlabelled = torch.from_numpy(labelled), torch.from_numpy(unlabelled)

    def __len__(self) -> int:
        return -(-len(self.labelled) // self.batch)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rows = slice(k * self.batch, (k + 1) * self.batch)
        li, ui = self.labelled[rows], self.unlabelled[rows]
        t = self.tensors
        return {
            "x_a": t["x_a"][li],
            "x_b": t["x_b"][li],
            "label": t["label"][li],
            "weight": t["weight"][li],
            "u_a": t["u_a"][ui],
            "u_b": t["u_b"][ui],
        }


class SURFSystem(RewardModelSystem):
    """The reward LightningModule with SURF's loss: cropped supervised CE + λ · confident pseudo-label CE.

    Args:
        scorer: the ensemble's segment scorer (shared, so the ensemble is what gets trained).
        horizon: labelled length H.
        window: margin w of the stored segments.
        crop: crop range c.
        tau: confidence threshold τ.
        lam: weight λ of the unlabelled loss.
        seed: seed of the crops.
        lr: Adam learning rate (the ensemble's).
    """

    def __init__(
        self,
        scorer: torch.nn.Module,
        horizon: int,
        window: int,
        crop: int,
        tau: float,
        lam: float,
        seed: int,
        lr: float = 3e-4,
    ):
        super().__init__(scorer, loss="bradley_terry", optimizer=lambda p: torch.optim.Adam(p, lr=lr))
        self.horizon, self.window, self.crop, self.tau, self.lam = horizon, window, crop, tau, lam
        self.crop_generator = torch.Generator().manual_seed(seed)

    def _cropped_scores(self, step_a: torch.Tensor, step_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums of the step rewards ``[M, B, H + 2w]`` over each pair's two crops → ``[M, B]`` each."""
        mask_a, mask_b, _ = crop_masks(step_a.shape[1], self.horizon, self.window, self.crop, self.crop_generator)
        return (step_a * mask_a).sum(-1), (step_b * mask_b).sum(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One SURF step: every member's own bootstrap-weighted CE on cropped labelled pairs + λ · its pseudo-CE."""
        from mmpref.losses import bradley_terry, soft_pairwise

        step = self.scorer.step_reward
        score_a, score_b = self._cropped_scores(step(batch["x_a"]), step(batch["x_b"]))
        label = batch["label"].to(score_a.dtype)
        per_pair = soft_pairwise(lambda w, lo: bradley_terry(w, lo, beta=1.0), score_a, score_b, label)  # [M, B]
        weight = batch["weight"].T.to(per_pair.dtype)  # [M, B] bootstrap counts
        supervised = (per_pair * weight).sum(-1) / weight.sum(-1).clamp_min(1e-12)  # [M]
        # One pass over the unlabelled segments: r̂ is per step, so the central window's sums (pseudo-labels, no
        # gradient) and the crops' sums (the loss) come from the same step rewards.
        u_a, u_b = step(batch["u_a"].flatten(0, 1)), step(batch["u_b"].flatten(0, 1))  # [M, B·μ, H + 2w]
        centre = slice(self.window, self.window + self.horizon)
        prob = torch.sigmoid(u_a.detach()[..., centre].sum(-1) - u_b.detach()[..., centre].sum(-1))
        hard, confident = pseudo_labels(prob, self.tau)  # [M, B·μ], each member's own prediction
        crop_a, crop_b = self._cropped_scores(u_a, u_b)
        unsupervised = soft_pairwise(lambda w, lo: bradley_terry(w, lo, beta=1.0), crop_a, crop_b, hard) * confident
        loss = (supervised + self.lam * unsupervised.mean(-1)).mean()
        size = int(label.shape[0])
        self.log("train/loss", loss, batch_size=size)
        self.log("train/surf/confident_fraction", confident.float().mean(), batch_size=size)
        return loss


class SURF:
    """The SURF part: longer stored segments, central-window labels, an unlabelled pool and the SURF update.

    Args:
        tau: confidence threshold τ.
        lam: weight λ of the unlabelled loss.
        mu: unlabelled pairs per labelled pair in a minibatch.
        unlabelled_ratio: unlabelled pairs gathered per label asked.
        window: margin w on each side of the labelled window.
        crop: crop range c.
        capacity: most unlabelled pairs kept (oldest dropped first).
    """

    name = "surf"

    def __init__(
        self,
        tau: float = 0.95,
        lam: float = 1.0,
        mu: int = 1,
        unlabelled_ratio: int = 10,
        window: int = 5,
        crop: int = 5,
        capacity: int = 20_000,
    ):
        if not 0.5 < tau <= 1.0:
            raise ValueError(f"surf_tau is a confidence threshold and must lie in (0.5, 1], got {tau}")
        if mu < 1 or unlabelled_ratio < 1 or window < 0 or crop < 0:
            raise ValueError("surf_mu and surf_unlabelled_ratio must be >= 1, surf_window and surf_crop >= 0")
        if crop > 2 * window:
            raise ValueError(f"surf_crop ({crop}) must be <= 2 * surf_window ({2 * window}) so every crop fits")
        self.tau, self.lam, self.mu, self.ratio = tau, lam, mu, unlabelled_ratio
        self.window, self.crop, self.capacity = window, crop, capacity
        self.unlabelled: list[SegmentPair] = []

    def segment_length(self, horizon: int) -> int:
        """Stored segments are ``H + 2w`` long."""
        return horizon + 2 * self.window

    def label(self, loop: PbRLLoop, queries: list[SegmentPair]) -> list[SegmentPair]:
        """The teacher judges the central H steps; the labelled pair keeps the full ``H + 2w`` segments."""
        horizon = loop.config.segment_length
        shown = [
            SegmentPair(id=q.id, a=central(q.a, self.window, horizon), b=central(q.b, self.window, horizon), label=0.5)
            for q in queries
        ]
        answers = {p.id: p for p in loop.teacher.label_pairs(shown)}
        return [
            SegmentPair(id=q.id, a=q.a, b=q.b, label=answers[q.id].label, teacher=answers[q.id].teacher)
            for q in queries
            if q.id in answers
        ]

    def update_reward(self, loop: PbRLLoop, new: list[SegmentPair]) -> None:
        """Gather unlabelled pairs from recent rollouts, then train the ensemble with the SURF loss."""
        c = loop.config
        wanted = self.ratio * max(len(new), 1)
        self.unlabelled = (self.unlabelled + loop.fragmenter(loop.env.recent_episodes(), wanted, loop.rng))[
            -self.capacity :
        ]
        ensemble, pairs = loop.ensemble, loop.labelled
        ensemble.add_bootstrap(len(pairs))
        rng = np.random.default_rng(int(ensemble.rng.integers(2**62)))
        batch = c.reward_batch_size
        rows = (c.reward_updates or max(1, c.reward_epochs * int(np.ceil(len(pairs) / batch)))) * batch
        labelled_rows = rng.integers(len(pairs), size=rows)
        unlabelled_rows = rng.integers(len(self.unlabelled), size=(rows, self.mu))
        # Only the unlabelled pairs this update draws are turned into arrays (the pool holds up to ``capacity``).
        drawn, unlabelled_rows = np.unique(unlabelled_rows, return_inverse=True)
        x_a, x_b = ensemble.features(pairs, keep=True)  # the labelled set: only its new rows are stacked
        u_a, u_b = segment_features([self.unlabelled[i] for i in drawn], ensemble.use_actions)
        tensors = {
            "x_a": torch.from_numpy(x_a),
            "x_b": torch.from_numpy(x_b),
            "label": torch.tensor([p.label for p in pairs], dtype=torch.float32),
            "weight": torch.from_numpy(ensemble.bootstrap[: len(pairs)]),
            "u_a": torch.from_numpy(u_a),
            "u_b": torch.from_numpy(u_b),
        }
        dataset = _Minibatches(tensors, labelled_rows, unlabelled_rows.reshape(rows, self.mu), batch)
        system = SURFSystem(
            ensemble.scorer, c.segment_length, self.window, self.crop, self.tau, self.lam, int(rng.integers(2**62))
        )
        quick_trainer(1, c.trainer).fit(system, DataLoader(dataset, batch_size=None, shuffle=False))

    def state_dict(self) -> dict[str, Any]:
        """The unlabelled pool (for exact resume)."""
        return {"unlabelled": self.unlabelled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the unlabelled pool."""
        self.unlabelled = state["unlabelled"]
