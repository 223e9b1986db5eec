r"""Reward learning from segment pairs: an ensemble of step-reward networks, and query selection.

A segment's score is its predicted (partial) return, optionally discounted:

.. math:: s(\sigma) = \sum_{t=0}^{H-1} w_t \hat r(o_t, a_t), \quad w_t = \gamma^{H-1-t} \ (\gamma = 1: \text{sum})

and each ensemble member is a :class:`~mmpref.reward.system.RewardModelSystem` over those scores, so any pairwise or
listwise loss of the core applies, soft and tie labels included (PEBBLE: Lee et al. 2021, an ensemble of 3 trained
on bootstrap resamples of the labelled pairs). Query selection (B-Pref §4.3): *uniform*; *disagreement* — the
standard deviation of P(a ≻ b) across members; *entropy* — the entropy of the members' mean P(a ≻ b); the
informed rules score ``oversample`` × n uniform candidates and keep the top n.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from mmpref.data import SegmentPair
from mmpref.losses import LossName
from mmpref.reward.datamodule import pair_dataset
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import quick_trainer

QueryMethod = Literal["uniform", "disagreement", "entropy"]


class StepReward(nn.Module):
    """r̂(o, a): an MLP on the concatenated observation and action, bounded by tanh (as in PEBBLE)."""

    def __init__(self, in_features: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU()]
            width = hidden
        blocks += [nn.Linear(width, 1), nn.Tanh()]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., o + a]`` → ``[...]``."""
        return self.net(x).squeeze(-1)


class SegmentReturnScorer(nn.Module):
    """Predicted (optionally discounted) return of segments ``[B, H, o + a]`` → ``[B]``."""

    def __init__(self, step_reward: StepReward, gamma: float = 1.0):
        super().__init__()
        self.step_reward = step_reward
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the step rewards over the segment."""
        rewards = self.step_reward(x)
        if self.gamma == 1.0:
            return rewards.sum(-1)
        horizon = rewards.shape[-1]
        weights = self.gamma ** torch.arange(horizon - 1, -1, -1, device=x.device, dtype=rewards.dtype)
        return (rewards * weights).sum(-1)


def segment_features(pairs: Sequence[SegmentPair]) -> tuple[np.ndarray, np.ndarray]:
    """Stack pairs into ``[N, H, o + a]`` arrays for the first and the second segments."""

    def stack(side: str) -> np.ndarray:
        return np.stack(
            [np.concatenate([getattr(p, side).observations, getattr(p, side).actions], -1) for p in pairs]
        ).astype(np.float32)

    return stack("a"), stack("b")


class RewardEnsemble:
    """An ensemble of segment-return reward models, trained through the reward LightningModule.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        members: ensemble size (PEBBLE: 3).
        loss: a loss of the core by name.
        gamma: discount of the segment score (1 = partial return).
        hidden: width of each step-reward MLP.
        lr: learning rate.
        seed: seed of the initialisation and the bootstrap resamples.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        members: int = 3,
        loss: LossName = "bradley_terry",
        gamma: float = 1.0,
        hidden: int = 256,
        lr: float = 3e-4,
        seed: int = 0,
    ):
        if members < 1:
            raise ValueError(f"an ensemble needs >= 1 member, got {members}")
        torch.manual_seed(seed)
        self.systems = [
            RewardModelSystem(
                SegmentReturnScorer(StepReward(obs_dim + act_dim, hidden), gamma),
                loss=loss,
                optimizer=lambda p: torch.optim.Adam(p, lr=lr),
            )
            for _ in range(members)
        ]
        self.rng = np.random.default_rng(seed)
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def fit(self, pairs: Sequence[SegmentPair], epochs: int = 20, batch_size: int = 128) -> None:
        """Train every member on its own bootstrap resample of the labelled pairs."""
        if not pairs:
            raise ValueError("no labelled pairs to learn a reward from")
        x_a, x_b = segment_features(pairs)
        labels = np.array([p.label for p in pairs], np.float32)
        from torch.utils.data import DataLoader

        for system in self.systems:
            chosen = self.rng.integers(0, len(pairs), len(pairs))
            loader = DataLoader(
                pair_dataset(x_a[chosen], x_b[chosen], labels[chosen]), batch_size=batch_size, shuffle=True
            )
            quick_trainer(epochs).fit(system, train_dataloaders=loader)

    @torch.no_grad()
    def step_reward(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Mean predicted reward of transitions ``[N, o]``, ``[N, a]`` → ``[N]``."""
        x = torch.from_numpy(np.concatenate([observations, actions], -1).astype(np.float32))
        return np.mean([s.scorer.step_reward(x).numpy() for s in self.systems], axis=0)

    @torch.no_grad()
    def pair_probabilities(self, pairs: Sequence[SegmentPair]) -> np.ndarray:
        """P(a ≻ b) per member and pair, ``[members, N]``."""
        x_a, x_b = (torch.from_numpy(x) for x in segment_features(pairs))
        return np.stack([s.preference_probability(x_a, x_b).numpy() for s in self.systems])

    def state_dict(self) -> list[dict]:
        """The members' weights (for checkpoints)."""
        return [s.state_dict() for s in self.systems]

    def load_state_dict(self, states: list[dict]) -> None:
        """Restore the members' weights."""
        for system, state in zip(self.systems, states, strict=True):
            system.load_state_dict(state)


def query_scores(probabilities: np.ndarray, method: QueryMethod) -> np.ndarray:
    """Informativeness of candidate pairs from the members' P(a ≻ b) ``[members, N]``: higher = ask first."""
    if method == "disagreement":
        return probabilities.std(0)
    if method == "entropy":
        p = np.clip(probabilities.mean(0), 1e-7, 1 - 1e-7)
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))
    raise ValueError(f"unknown query method {method!r}; valid: uniform, disagreement, entropy")


def select_queries(
    candidates: Sequence[SegmentPair],
    n: int,
    method: QueryMethod,
    rng: np.random.Generator,
    ensemble: RewardEnsemble | None = None,
    oversample: int = 10,
) -> list[SegmentPair]:
    """Choose n pairs to ask: uniformly, or the top n by disagreement/entropy among ``oversample`` × n candidates."""
    if method == "uniform":
        chosen = rng.choice(len(candidates), min(n, len(candidates)), replace=False)
        return [candidates[i] for i in chosen]
    if ensemble is None:
        raise ValueError(f"query method {method!r} needs a reward ensemble")
    pool_idx = rng.choice(len(candidates), min(len(candidates), oversample * n), replace=False)
    pool = [candidates[i] for i in pool_idx]
    scores = query_scores(ensemble.pair_probabilities(pool), method)
    return [pool[i] for i in np.argsort(-scores, kind="stable")[:n]]
