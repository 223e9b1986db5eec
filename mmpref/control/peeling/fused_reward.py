"""The fused reward model of peeling's stage 2: w·Σ_t m_t + mean_t r̂(s_t, a_t), learned from trajectory ratings.

:class:`FusedTrajectoryScorer` fuses the task metric (:mod:`mmpref.control.peeling.metric`) with a learned step
reward; :func:`fit_fused_reward` trains it through :class:`~mmpref.reward.system.RewardModelSystem` (every ordered pair
of differently rated trajectories of a rated list is a Bradley-Terry pair); :func:`score_trajectories` scores whole
trajectories or their windows; :class:`RewardRefit` rates some rollouts of every round and refits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmpref.control.peeling.metric import progress_steps, window_edges
from mmpref.control.reward import StepReward
from mmpref.control.segments import Episode
from mmpref.control.teachers import RatingTeacher
from mmpref.reward.datamodule import list_dataset
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import TrainerSettings, quick_trainer, quiet_lightning


class FusedTrajectoryScorer(nn.Module):
    r"""s(τ) = w·Σ_t m_t + (1/T)·Σ_t r̂(s_t, a_t) on features ``[B, T, o + a + 1]`` (last channel: m_t).

    The metric's weight w (initialised to ``metric_weight``) and the step reward r̂ are learned from the labels, so
    the ratings decide how much the hand-written metric counts and r̂ supplies what the metric misses.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64, metric_weight: float = 1.0):
        super().__init__()
        self.step_reward = StepReward(obs_dim + act_dim, hidden, layers=2)
        self.metric_weight = nn.Parameter(torch.tensor(float(metric_weight)))
        self.in_features = obs_dim + act_dim + 1

    def step_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The per-step terms w·m_t + r̂(s_t, a_t)/T, ``[..., T, o + a + 1]`` → ``[..., T]`` (they sum to s(τ))."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"features must end in size {self.in_features} (obs, action, metric), got {x.shape}")
        return self.metric_weight * x[..., -1] + self.step_reward(x[..., :-1]) / x.shape[-2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., T, o + a + 1]`` → ``[...]``."""
        return self.step_scores(x).sum(-1)


def trajectory_features(episodes: Sequence[Episode], smoothness: float = 0.0, log_floor: float = 0.0) -> np.ndarray:
    """Stack equal-length episodes into ``[N, T, o + a + 1]`` (observation, action, per-step metric)."""
    lengths = {len(e) for e in episodes}
    if len(lengths) != 1:
        raise ValueError(
            f"trajectories must share one length (roll out with a fixed max_steps), got {sorted(lengths)}"
        )
    return np.stack(
        [
            np.concatenate(
                [
                    e.observations,
                    e.actions,
                    progress_steps(e.observations, e.next_observations, e.actions, smoothness, log_floor)[:, None],
                ],
                -1,
            )
            for e in episodes
        ]
    ).astype(np.float32)


def fit_fused_reward(
    episodes: Sequence[Episode],
    ratings: Sequence[int],
    smoothness: float = 0.0,
    list_size: int = 8,
    epochs: int = 30,
    hidden: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log_floor: float = 0.0,
    trainer: TrainerSettings | None = None,
) -> RewardModelSystem:
    """Learn the fused reward from trajectory ratings (Bradley-Terry on rated lists).

    Random lists of ``list_size`` rated trajectories; every ordered pair of differently rated trajectories of a list
    is a Bradley-Terry pair (ties give no pair). ``trainer``: where to train (default: the accelerator there is).

    Returns:
        The trained system (call it on :func:`trajectory_features` to score trajectories).
    """
    if len(episodes) != len(ratings):
        raise ValueError(f"{len(episodes)} trajectories but {len(ratings)} ratings")
    if len(episodes) < list_size or list_size < 2:
        raise ValueError(f"need >= list_size >= 2 rated trajectories, got {len(episodes)} and list_size {list_size}")
    features = trajectory_features(episodes, smoothness, log_floor)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_lists = max(1, 4 * len(episodes) // list_size)  # each trajectory appears in ~4 lists
    index = np.stack([rng.choice(len(episodes), list_size, replace=False) for _ in range(n_lists)])
    targets = np.asarray(ratings, np.float32)[index]
    scorer = FusedTrajectoryScorer(episodes[0].observations.shape[-1], episodes[0].actions.shape[-1], hidden)
    system = RewardModelSystem(scorer, loss="bradley_terry", optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    loader = DataLoader(
        list_dataset(features[index], targets),
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    quiet_lightning()
    quick_trainer(epochs, trainer).fit(system, train_dataloaders=loader)
    system.eval()
    return system


def score_trajectories(
    system: RewardModelSystem,
    episodes: Sequence[Episode],
    smoothness: float = 0.0,
    windows: int = 1,
    log_floor: float = 0.0,
) -> np.ndarray:
    """The fused reward of each trajectory, ``[N]``; with ``windows`` > 1 each window's share, ``[N, windows]``.

    A window's share is the sum of the scorer's per-step terms over its steps
    (:meth:`FusedTrajectoryScorer.step_scores`), so the shares of a trajectory add up to its score.
    """
    features = torch.from_numpy(trajectory_features(episodes, smoothness, log_floor))
    with torch.no_grad():
        if windows == 1:
            return system(features).numpy()
        steps = system.scorer.step_scores(features).numpy()
    edges = window_edges(steps.shape[-1], windows)
    return np.stack([steps[:, a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:], strict=True)], -1)


@dataclass
class RewardRefit:
    """Rate some rollouts of every finetuning round and refit the fused reward on all ratings so far.

    The fused reward is first fit on rated rollouts of the BC policy; finetuning moves the policy off that
    distribution, where the reward's ranking can go wrong unseen (on push-v3 its validation score kept rising on
    seeds whose held-out success fell). Calling the refit with a round's rollouts rates ``per_round`` of them (a
    random choice) with the same ``teacher``, adds them to the rated set and fits a fresh fused reward on the whole
    set (:func:`fit_fused_reward`, seeded by ``seed`` + the number of fits), so the next round is ranked by a reward
    that has seen the current policy's behaviour.

    Args:
        teacher: rates a trajectory 1..levels on its return (its scale stays fixed: the same rater throughout).
        episodes: the rated set so far (equal-length trajectories); grows in place.
        ratings: their ratings; grows in place.
        per_round: rollouts rated per call.
        smoothness: jerk weight λ of the metric.
        windows: the score returned per trajectory (1) or per window (> 1), as :func:`score_trajectories`.
        epochs: epochs of every fit.
        seed: seeds the choice of rated rollouts and the fits.
        log_floor: ε of the metric's log-distance form (0: linear progress; :func:`progress_steps`).
        trainer: where every fit trains.
    """

    teacher: RatingTeacher
    episodes: list[Episode]
    ratings: list[int]
    per_round: int
    smoothness: float = 0.0
    windows: int = 1
    epochs: int = 30
    seed: int = 0
    log_floor: float = 0.0
    trainer: TrainerSettings | None = None
    fits: int = 0

    def __post_init__(self) -> None:
        if self.per_round < 1:
            raise ValueError(f"per_round must be >= 1 rollouts rated per round, got {self.per_round}")
        if len(self.episodes) != len(self.ratings):
            raise ValueError(f"{len(self.episodes)} rated trajectories but {len(self.ratings)} ratings")
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, rollouts: Sequence[Episode]) -> Callable[[Sequence[Episode]], np.ndarray]:
        """Rate ``per_round`` of ``rollouts``, refit, and return the new ranking function (episodes → scores)."""
        chosen = self.rng.choice(len(rollouts), min(self.per_round, len(rollouts)), replace=False)
        for i in chosen:
            self.episodes.append(rollouts[i])
            self.ratings.append(self.teacher.rate(rollouts[i].rewards))
        self.fits += 1
        system = fit_fused_reward(
            self.episodes,
            self.ratings,
            self.smoothness,
            epochs=self.epochs,
            seed=self.seed + self.fits,
            log_floor=self.log_floor,
            trainer=self.trainer,
        )
        return lambda episodes: score_trajectories(system, episodes, self.smoothness, self.windows, self.log_floor)
