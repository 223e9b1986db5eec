"""A learned reward standing in for a person: label base samples with a hidden taste, fit a reward model on them.

The experiment of issue 23 (over-optimisation): a person (here a simulated taste the trainer never sees) labels a
few hundred pairs of the base model's samples; a :class:`~mmpref.reward.system.RewardModelSystem` over flattened
pixels learns r(x) from them with the Bradley-Terry loss, P(a ≻ b) = σ(r(a) − r(b)); on-policy Diffusion-DPO then
optimises r instead of the person. Judging the tuned model by the hidden taste, not by r, measures what the
generator learned of the person; the difference between its win rate under r and under the hidden taste is the
over-optimisation gap (how much of the apparent gain is exploiting r's errors).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmpref.reward.datamodule import DictDataset
from mmpref.reward.networks import MLPScorer
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import quick_trainer
from mmpref.vision.diffusion.digits import PREFERENCE_CLASSES
from mmpref.vision.diffusion.evaluate import Scorer, sample_prompts
from mmpref.vision.diffusion.rewards import RewardScorer, pixel_features, save_reward_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class LabelledPairs:
    """Pairs of images ``[N, C, H, W]`` labelled by a taste: ``x_w`` preferred to ``x_l``."""

    x_w: torch.Tensor
    x_l: torch.Tensor

    def __len__(self) -> int:
        return len(self.x_w)

    def split(self, fraction: float, seed: int = 0) -> tuple[LabelledPairs, LabelledPairs]:
        """A random ``(1 − fraction, fraction)`` split (train, validation)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        cut = len(self) - int(round(fraction * len(self)))
        a, b = order[:cut], order[cut:]
        return LabelledPairs(self.x_w[a], self.x_l[a]), LabelledPairs(self.x_w[b], self.x_l[b])


def label_base_pairs(model: Any, taste: Scorer, pairs: int, seed: int = 0, steps: int = 25) -> LabelledPairs:
    """``pairs`` within-prompt pairs of the base's samples on the preference prompts, each image in one pair.

    Samples ``2·⌈pairs / P⌉`` images for each of the P preference prompts (classes 0–6, training wording), pairs them
    consecutively and orders each pair by ``taste`` (ties broken towards the first image).
    """
    from mmpref.vision.diffusion.train import preference_prompts

    prompts = preference_prompts(PREFERENCE_CLASSES)
    per_prompt = 2 * -(-pairs // len(prompts))
    with torch.no_grad():
        images = sample_prompts(model.unet, model.scheduler, model.prompts.encode(prompts), per_prompt, seed, steps)
    flat = images.reshape(-1, *images.shape[2:])
    scores = taste(flat).view(len(prompts), per_prompt)
    a, b = images[:, 0::2].reshape(-1, *images.shape[2:]), images[:, 1::2].reshape(-1, *images.shape[2:])
    first = (scores[:, 0::2] >= scores[:, 1::2]).reshape(-1, 1, 1, 1)
    keep = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))[:pairs]
    return LabelledPairs(torch.where(first, a, b)[keep], torch.where(first, b, a)[keep])


def pixel_reward(size: int, channels: int = 1, hidden: tuple[int, ...] = (64,), lr: float = 1e-3) -> RewardModelSystem:
    """A RewardModelSystem over flattened pixels ``[N, C·S·S]``: an MLP scorer, Bradley-Terry, AdamW."""
    return RewardModelSystem(
        MLPScorer(channels * size * size, hidden=hidden),
        loss="bradley_terry",
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=1e-2),
    )


def fit_pixel_reward(
    train: LabelledPairs, steps: int = 300, batch: int = 64, hidden: tuple[int, ...] = (64,), seed: int = 0
) -> RewardModelSystem:
    """Fit :func:`pixel_reward` on labelled pairs (every pair presented in a random order: label 1 or 0)."""
    torch.manual_seed(seed)
    channels, size = int(train.x_w.shape[1]), int(train.x_w.shape[-1])
    system = pixel_reward(size, channels, hidden)
    flip = torch.rand(len(train), generator=torch.Generator().manual_seed(seed)) < 0.5
    fw, fl = pixel_features(train.x_w, channels, size), pixel_features(train.x_l, channels, size)
    x_a = torch.where(flip[:, None], fl, fw)
    x_b = torch.where(flip[:, None], fw, fl)
    data = DictDataset(x_a=x_a, x_b=x_b, label=(~flip).float())
    loader = DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))
    quick_trainer(max_epochs=100_000, max_steps=steps).fit(system, loader)
    return system.eval()


def pair_accuracy(scorer: Scorer, pairs: LabelledPairs) -> float:
    """Share of pairs the scorer orders as the taste did (ties count ½)."""
    s_w, s_l = scorer(pairs.x_w), scorer(pairs.x_l)
    return float(((s_w > s_l).float() + 0.5 * (s_w == s_l).float()).mean())


def save_pixel_reward(system: RewardModelSystem, path: str | Path, channels: int, size: int) -> Path:
    """Write the fitted reward as a checkpoint :func:`mmpref.vision.diffusion.rewards.load_reward` reads."""
    scorer = system.scorer
    hidden = [m.out_features for m in scorer.net if isinstance(m, torch.nn.Linear)][:-1]
    spec = {"class_path": "mmpref.reward.networks.MLPScorer", "init_args": {"in_features": scorer.in_features}}
    spec["init_args"]["hidden"] = hidden
    return save_reward_checkpoint(system, path, {"kind": "pixels", "channels": channels, "size": size}, spec)


def as_scorer(system: RewardModelSystem, channels: int, size: int) -> RewardScorer:
    """The fitted reward (in memory) as a scorer of images, as :func:`load_reward` would give it."""
    features = lambda x: pixel_features(x, channels, size)  # noqa: E731
    return RewardScorer(features, system.eval(), "checkpoint", "<memory>", f"pixels {channels}×{size}×{size}")
