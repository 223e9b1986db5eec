"""On-policy preference data: sample N images per prompt from the current model, score them, keep pairs or lists.

UnifiedReward-style construction: pair ranking (random within-prompt pairs, or the best/worst of each group of N)
and point sifting (a score-gap filter drops near-ties, measured in the prompt's own score SD). The scorer is any
callable from images ``[N, C, H, W]`` to scores ``[N]``: a simulated taste on the embedded default, or an mmpref
reward model wrapped the same way. :func:`mmpref.vision.diffusion.train.train_dpo` repeats sample → score → train
for R rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mmpref.reward.datamodule import DictDataset
from mmpref.vision.diffusion.base import sample, seeded_noise

logger = logging.getLogger(__name__)
Scorer = Callable[[torch.Tensor], torch.Tensor]
Pairing = Literal["random", "best_worst"]


@dataclass
class Candidates:
    """Samples grouped by prompt.

    Attributes:
        images: ``[P, N, C, H, W]`` in [−1, 1].
        scores: ``[P, N]`` scorer outputs (higher = preferred).
        cond: ``[P, S, D]`` the prompts' conditioning.
        prompts: the P prompts.
    """

    images: torch.Tensor
    scores: torch.Tensor
    cond: torch.Tensor
    prompts: list[str]


def sample_candidates(
    unet: nn.Module,
    scheduler: Any,
    cond: torch.Tensor,
    prompts: Sequence[str],
    per_prompt: int,
    scorer: Scorer,
    seed: int,
    steps: int = 25,
) -> Candidates:
    """Sample ``per_prompt`` images for each prompt (conditioning ``cond [P, S, D]``) and score them."""
    p = len(prompts)
    size = int(unet.config.sample_size)
    channels = int(unet.config.in_channels)
    flat_cond = cond.repeat_interleave(per_prompt, 0)
    images = sample(unet, scheduler, flat_cond, seeded_noise(p * per_prompt, seed, size, channels), steps)
    scores = scorer(images).float().view(p, per_prompt)
    return Candidates(images.view(p, per_prompt, *images.shape[1:]), scores, cond, list(prompts))


def build_pairs(
    candidates: Candidates,
    pairing: Pairing = "random",
    pairs_per_sample: int = 4,
    group: int = 4,
    min_gap_sd: float = 0.0,
    seed: int = 0,
    user: int | None = None,
) -> DictDataset:
    """Preference pairs ``{x_w, x_l, cond[, user]}`` from scored candidates.

    Args:
        candidates: samples grouped by prompt.
        pairing: ``"random"``: each sample is paired ``pairs_per_sample`` times with a random other sample of its
            prompt; ``"best_worst"``: the best and worst of each consecutive group of ``group`` samples.
        pairs_per_sample: random pairings per sample.
        group: group size for best/worst.
        min_gap_sd: drop pairs whose score gap is below this many within-prompt SDs (point sifting).
        seed: seed of the random pairing.
        user: if given, every pair carries this user index.

    Raises:
        ValueError: when the filter leaves no pair.
    """
    images, scores = candidates.images, candidates.scores
    p, n = scores.shape
    generator = torch.Generator().manual_seed(seed)
    if pairing == "random":
        first = torch.arange(n).repeat(pairs_per_sample)
        offset = torch.randint(1, n, (p, len(first)), generator=generator)
        a_idx = first.expand(p, -1)
        b_idx = (a_idx + offset) % n
    elif pairing == "best_worst":
        usable = n // group * group
        grouped = scores[:, :usable].view(p, -1, group)
        base = (torch.arange(usable // group) * group).view(1, -1)
        a_idx = grouped.argmax(2) + base
        b_idx = grouped.argmin(2) + base
    else:
        raise ValueError(f"pairing must be 'random' or 'best_worst', got {pairing!r}")
    sa, sb = scores.gather(1, a_idx), scores.gather(1, b_idx)
    sd = scores.std(1, keepdim=True).clamp_min(1e-12)
    keep = (sa - sb).abs() / sd > max(min_gap_sd, 0.0) if min_gap_sd > 0 else sa != sb
    win = torch.where(sa >= sb, a_idx, b_idx)
    lose = torch.where(sa >= sb, b_idx, a_idx)
    rows = torch.arange(p).view(-1, 1).expand_as(win)
    rows, win, lose = rows[keep], win[keep], lose[keep]
    if len(rows) == 0:
        raise ValueError(f"no pair passed the score-gap filter (min_gap_sd={min_gap_sd}); lower it")
    tensors = {"x_w": images[rows, win], "x_l": images[rows, lose], "cond": candidates.cond[rows]}
    if user is not None:
        tensors["user"] = torch.full((len(rows),), user, dtype=torch.long)
    return DictDataset(**tensors)


def build_lists(
    candidates: Candidates, k: int = 4, min_spread_sd: float = 0.0, user: int | None = None
) -> DictDataset:
    """Ranked lists ``{x [K,...], targets [K], cond[, user]}``: consecutive groups of ``k`` samples of a prompt.

    Lists whose score range is below ``min_spread_sd`` within-prompt SDs are dropped.
    """
    images, scores = candidates.images, candidates.scores
    p, n = scores.shape
    usable = n // k * k
    if usable == 0:
        raise ValueError(f"k={k} is larger than the {n} samples per prompt")
    x = images[:, :usable].reshape(p * (usable // k), k, *images.shape[2:])
    targets = scores[:, :usable].reshape(-1, k)
    cond = candidates.cond.repeat_interleave(usable // k, 0)
    sd = scores.std(1).clamp_min(1e-12).repeat_interleave(usable // k)
    keep = (targets.max(1).values - targets.min(1).values) / sd > min_spread_sd
    tensors = {"x": x[keep], "targets": targets[keep], "cond": cond[keep]}
    if user is not None:
        tensors["user"] = torch.full((int(keep.sum()),), user, dtype=torch.long)
    return DictDataset(**tensors)


def concat(datasets: Sequence[DictDataset]) -> DictDataset:
    """One dataset from several with the same fields (e.g. pairs of several users)."""
    names = datasets[0].tensors.keys()
    return DictDataset(**{name: torch.cat([d.tensors[name] for d in datasets]) for name in names})
