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
from torch.utils.data import DataLoader, RandomSampler

from mmpref.data import Segment, SegmentPair
from mmpref.losses import LossName, is_listwise
from mmpref.reward.datamodule import DictDataset
from mmpref.reward.networks import mlp_blocks
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import TrainerSettings, quick_trainer

QueryMethod = Literal["uniform", "disagreement", "entropy"]


class StepReward(nn.Module):
    """r̂(o, a): an MLP on the concatenated observation and action, bounded by tanh (as in PEBBLE)."""

    def __init__(self, in_features: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        blocks = mlp_blocks(in_features, [hidden] * layers, nn.LeakyReLU)
        self.net = nn.Sequential(*blocks, nn.Linear(hidden if layers else in_features, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., o + a]`` → ``[...]``."""
        return self.net(x).squeeze(-1)


class EnsembleStepReward(nn.Module):
    """M independent step-reward MLPs (each like :class:`StepReward`) evaluated in one batched pass.

    ``[..., in_features]`` → ``[M, ...]``. One fused pass instead of M module calls keeps the per-step reward of the
    online loop and the reward updates cheap on a CPU; the members share nothing but the input.

    Args:
        in_features: input size (observation + action).
        members: ensemble size M.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        seed: seed of the initialisation (a private generator: the global RNG is not touched).
    """

    def __init__(self, in_features: int, members: int = 3, hidden: int = 256, layers: int = 3, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = [in_features] + [hidden] * layers + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            # nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
            bound = fan_in**-0.5
            self.weights.append(
                nn.Parameter((torch.rand(members, fan_in, fan_out, generator=generator) * 2 - 1) * bound)
            )
            self.biases.append(nn.Parameter((torch.rand(members, 1, fan_out, generator=generator) * 2 - 1) * bound))
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in_features]`` → ``[M, ...]``, each member bounded by tanh (as in PEBBLE)."""
        lead = x.shape[:-1]
        h = torch.einsum("nf,mfh->mnh", x.reshape(-1, x.shape[-1]), self.weights[0]) + self.biases[0]
        for weight, bias in zip(self.weights[1:], self.biases[1:], strict=True):
            h = torch.baddbmm(bias, nn.functional.leaky_relu(h), weight)
        return torch.tanh(h).reshape(self.members, *lead)


class SegmentReturnScorer(nn.Module):
    """Predicted (optionally discounted) return of segments ``[B, H, o + a]`` → ``[B]`` (``[M, B]`` for ensembles)."""

    def __init__(self, step_reward: nn.Module, gamma: float = 1.0):
        super().__init__()
        self.step_reward = step_reward
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the step rewards over the segment (the last axis of the step rewards)."""
        rewards = self.step_reward(x)
        if self.gamma == 1.0:
            return rewards.sum(-1)
        horizon = rewards.shape[-1]
        weights = self.gamma ** torch.arange(horizon - 1, -1, -1, device=x.device, dtype=rewards.dtype)
        return (rewards * weights).sum(-1)


def segment_features(pairs: Sequence[SegmentPair], use_actions: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Stack pairs into ``[N, H, o + a]`` arrays (``[N, H, o]`` without actions) for the first and second segments."""

    def stack(side: str) -> np.ndarray:
        parts = [(getattr(p, side).observations, getattr(p, side).actions) for p in pairs]
        return np.stack([np.concatenate(x if use_actions else x[:1], -1) for x in parts]).astype(np.float32)

    return stack("a"), stack("b")


class RewardEnsemble:
    """An ensemble of segment-return reward models, trained through the reward LightningModule in one fused pass.

    The members are one :class:`EnsembleStepReward` inside one :class:`~mmpref.reward.system.RewardModelSystem`;
    each member has its own loss term, weighted by its own bootstrap counts: every labelled pair gets
    Poisson(1)-distributed counts per member, drawn once when it is first seen (the online bootstrap, which for a
    growing label set matches resampling with replacement without redrawing old pairs).

    Args:
        obs_dim: observation size.
        act_dim: action size.
        members: ensemble size (PEBBLE: 3).
        loss: a pairwise loss of the core by name.
        gamma: discount of the segment score (1 = partial return).
        hidden: width of each step-reward MLP (PEBBLE: 256).
        layers: hidden layers of each step-reward MLP (PEBBLE: 3).
        lr: learning rate.
        seed: seed of the initialisation, the bootstrap counts and the minibatch order.
        use_actions: r̂(o, a) (PEBBLE) or a state-only r̂(o). A state-only reward cannot be raised by the action
            alone, which removes one way for the policy to exploit a reward learned from few labels.
        trainer: where the reward updates train (default: :class:`~mmpref.reward.trainers.TrainerSettings`).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        members: int = 3,
        loss: LossName = "bradley_terry",
        gamma: float = 1.0,
        hidden: int = 256,
        layers: int = 3,
        lr: float = 3e-4,
        seed: int = 0,
        use_actions: bool = True,
        trainer: TrainerSettings | None = None,
    ):
        if members < 1:
            raise ValueError(f"an ensemble needs >= 1 member, got {members}")
        if is_listwise(loss):
            raise ValueError(f"the segment reward ensemble learns from pairs; {loss!r} is a listwise loss")
        self.members = members
        network = EnsembleStepReward(obs_dim + (act_dim if use_actions else 0), members, hidden, layers, seed=seed)
        self.system = RewardModelSystem(
            SegmentReturnScorer(network, gamma), loss=loss, optimizer=lambda p: torch.optim.Adam(p, lr=lr)
        )
        self.rng = np.random.default_rng(seed)
        self.bootstrap = np.zeros((0, members), np.float32)  # counts per labelled pair (rows) and member
        self.obs_dim, self.act_dim, self.use_actions = obs_dim, act_dim, use_actions
        self.trainer = trainer
        # the stacked features of the labelled pairs last fitted on: the labelled set only grows, and RIME judges and
        # fits it again every epoch, so re-stacking it each time was a few % of a run's CPU
        self._cached: tuple[list[tuple[Segment, Segment]], np.ndarray, np.ndarray] | None = None

    def features(self, pairs: Sequence[SegmentPair], keep: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``segment_features(pairs)``, reusing the rows of the cached pairs when those are a prefix of ``pairs``.

        A pair is the same row when it holds the very same segment objects (its label may differ: RIME's flipped
        copies). ``keep``: cache the result for the next call (the labelled set; not a one-off query pool).
        """
        done = self._cached_prefix(pairs)
        x_a, x_b = (self._cached[1], self._cached[2]) if done else (None, None)
        if done < len(pairs) or x_a is None:
            new_a, new_b = segment_features(pairs[done:], self.use_actions)
            x_a, x_b = (new_a, new_b) if x_a is None else (np.concatenate([x_a, new_a]), np.concatenate([x_b, new_b]))
        if keep:
            self._cached = ([(p.a, p.b) for p in pairs], x_a, x_b)
        return x_a, x_b

    def _cached_prefix(self, pairs: Sequence[SegmentPair]) -> int:
        """How many cached rows answer the first pairs of ``pairs`` (0 unless all of the cached ones do)."""
        if self._cached is None or not self._cached[0] or len(self._cached[0]) > len(pairs):
            return 0
        same = all(p.a is a and p.b is b for p, (a, b) in zip(pairs, self._cached[0], strict=False))
        return len(self._cached[0]) if same else 0

    @property
    def scorer(self) -> SegmentReturnScorer:
        """The fused segment scorer: ``[B, H, o + a]`` → ``[M, B]``."""
        return self.system.scorer

    def add_bootstrap(self, count: int) -> None:
        """Draw Poisson(1) bootstrap counts for labelled pairs beyond the first ``len(self.bootstrap)``."""
        new = count - len(self.bootstrap)
        if new > 0:
            self.bootstrap = np.concatenate([self.bootstrap, self.rng.poisson(1.0, (new, self.members))]).astype(
                np.float32
            )

    def fit(
        self,
        pairs: Sequence[SegmentPair],
        epochs: int = 20,
        batch_size: int = 128,
        updates: int | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        """Train the members on their bootstrap weights of the labelled pairs (warm-started from the last fit).

        Args:
            pairs: the labelled pairs; append-only across calls (pair i keeps its bootstrap counts).
            epochs: passes over the pairs (when ``updates`` is None).
            batch_size: pairs per minibatch.
            updates: if given, exactly this many minibatch updates (drawn with replacement) instead of epochs:
                a fixed cost per reward update however many labels have been collected.
            rows: if given, train only on these rows of ``pairs`` (each keeping its bootstrap counts), e.g. the
                pairs a sample-selection rule trusts.
        """
        if not pairs:
            raise ValueError("no labelled pairs to learn a reward from")
        self.add_bootstrap(len(pairs))
        weights = self.bootstrap[: len(pairs)]
        x_a, x_b = self.features(pairs, keep=True)
        labels = np.array([p.label for p in pairs], np.float32)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if not len(rows):
                raise ValueError("rows selects no labelled pairs to learn a reward from")
            x_a, x_b, labels, weights = x_a[rows], x_b[rows], labels[rows], weights[rows]
        dataset = DictDataset(
            x_a=torch.from_numpy(x_a),
            x_b=torch.from_numpy(x_b),
            label=torch.from_numpy(labels),
            weight=torch.from_numpy(weights),
        )
        generator = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        if updates is None:
            sampler = RandomSampler(dataset, generator=generator)
            max_epochs = epochs
        else:
            sampler = RandomSampler(dataset, replacement=True, num_samples=updates * batch_size, generator=generator)
            max_epochs = 1
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
        quick_trainer(max_epochs, self.trainer).fit(self.system, train_dataloaders=loader)

    @torch.inference_mode()
    def step_reward(self, observations: np.ndarray, actions: np.ndarray, pessimism: float = 0.0) -> np.ndarray:
        """Predicted reward of transitions ``[N, o]``, ``[N, a]`` → ``[N]``: the members' mean − λ · their std.

        With ``pessimism`` λ > 0 transitions the members disagree on (far from the labelled segments) earn less, so
        a policy is not drawn to where the learned reward only extrapolates.
        """
        parts = [observations, actions] if self.use_actions else [observations]
        rewards = self.scorer.step_reward(torch.from_numpy(np.concatenate(parts, -1, dtype=np.float32)))
        if pessimism == 0.0 or self.members == 1:
            return rewards.mean(0).numpy()
        return (rewards.mean(0) - pessimism * rewards.std(0, correction=0)).numpy()

    @torch.inference_mode()
    def pair_probabilities(self, pairs: Sequence[SegmentPair], chunk: int = 1024) -> np.ndarray:
        """P(a ≻ b) per member and pair, ``[members, N]``."""
        parts = []
        labelled = self._cached_prefix(pairs) > 0  # the labelled set again (RIME): stacked once, then sliced
        all_a, all_b = self.features(pairs) if labelled else (None, None)
        for start in range(0, len(pairs), chunk):
            if labelled:
                x_a, x_b = all_a[start : start + chunk], all_b[start : start + chunk]
            else:
                x_a, x_b = segment_features(pairs[start : start + chunk], self.use_actions)
            parts.append(self.system.preference_probability(torch.from_numpy(x_a), torch.from_numpy(x_b)).numpy())
        return np.concatenate(parts, axis=1)

    def state_dict(self) -> dict:
        """The members' weights and bootstrap counts (for checkpoints)."""
        return {"system": self.system.state_dict(), "bootstrap": self.bootstrap.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the members' weights and bootstrap counts."""
        self.system.load_state_dict(state["system"])
        self.bootstrap = np.asarray(state["bootstrap"], np.float32)


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
