"""The peeling pipeline's quantitative task metric: object-to-goal progress minus a jerk penalty.

For Meta-World tasks that move an object to a goal (push, sweep, slide ...): observation slots 4:7 hold the object's
position and 36:39 the goal's, so with d_t = ‖obj_t − goal‖ the per-step metric is
m_t = (d_t − d_{t+1}) / d_0 − λ ‖a_t − a_{t−1}‖², and a segment's metric is Σ_t m_t over its steps
(:mod:`mmpref.control.peeling.finetune` gives the whole method).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmpref.control.segments import Episode

OBJECT_SLICE, GOAL_SLICE = slice(4, 7), slice(36, 39)


def progress_steps(
    observations: np.ndarray,
    next_observations: np.ndarray,
    actions: np.ndarray,
    smoothness: float = 0.0,
    log_floor: float = 0.0,
) -> np.ndarray:
    r"""Per-step metric m_t = (d_t − d_{t+1}) / d_0 − λ‖a_t − a_{t−1}‖² of one trajectory.

    With ``log_floor`` ε > 0 the distance is measured on a log scale instead,
    m_t = [log(d_t + ε) − log(d_{t+1} + ε)] / log((d_0 + ε) / ε) − λ‖a_t − a_{t−1}‖²: the sum is still 0 for no
    progress and 1 for the object on the goal, but a centimetre near the goal counts (d_0 + ε)/(d + ε) times what it
    counts at the start, so the metric tells "just outside the success radius" from "inside it" more sharply.

    Args:
        observations: ``[T, 39]`` observations before each action (step 0 starts the trajectory).
        next_observations: ``[T, 39]`` observations after each action.
        actions: ``[T, a]`` actions (a_{−1} = a_0, so step 0 has no jerk).
        smoothness: jerk weight λ ≥ 0.
        log_floor: ε of the log-distance form (0: linear progress); in the units of the observation (metres).

    Returns:
        ``[T]``; summing it over the trajectory gives the fraction of the initial distance covered (linear or log)
        minus λ·jerk.
    """
    if observations.ndim != 2 or observations.shape[-1] < GOAL_SLICE.stop:
        raise ValueError(
            f"need Meta-World observations [T, 39] (object at 4:7, goal at 36:39), got {observations.shape}"
        )
    if next_observations.shape != observations.shape or len(actions) != len(observations):
        raise ValueError(
            f"observations {observations.shape}, next_observations {next_observations.shape} and actions "
            f"{actions.shape} must share T"
        )
    if log_floor < 0:
        raise ValueError(f"log_floor must be >= 0 (0: linear progress), got {log_floor}")
    goal = observations[0, GOAL_SLICE]
    d_before = np.linalg.norm(observations[:, OBJECT_SLICE] - goal, axis=-1)
    d_after = np.linalg.norm(next_observations[:, OBJECT_SLICE] - goal, axis=-1)
    if log_floor > 0:
        # the whole way from d_0 to the goal spans log((d_0 + ε) / ε); a start on the goal has nothing to cover
        span = max(float(np.log((d_before[0] + log_floor) / log_floor)), 1e-6)
        steps = (np.log(d_before + log_floor) - np.log(d_after + log_floor)) / span
    else:
        steps = (d_before - d_after) / max(float(d_before[0]), 1e-6)
    if smoothness > 0:
        previous = np.concatenate([actions[:1], actions[:-1]])
        steps = steps - smoothness * ((actions - previous) ** 2).sum(-1)
    return steps.astype(np.float32)


def segment_metric(episode: Episode, length: int, smoothness: float = 0.0, log_floor: float = 0.0) -> np.ndarray:
    """The metric of each non-overlapping ``length``-step segment of an episode, ``[T // length]``."""
    steps = progress_steps(episode.observations, episode.next_observations, episode.actions, smoothness, log_floor)
    usable = len(steps) // length * length
    return steps[:usable].reshape(-1, length).sum(-1)


@dataclass(frozen=True)
class Outcome:
    """How one evaluated episode ended: success, final progress 1 − d_T/d_0, mean squared action change."""

    success: bool
    progress: float
    jerk: float


def outcome(episode: Episode) -> Outcome:
    """Success (``info["success"]`` at any step), final progress and jerk of an episode."""
    goal = episode.observations[0, GOAL_SLICE]
    d0 = max(float(np.linalg.norm(episode.observations[0, OBJECT_SLICE] - goal)), 1e-6)
    d_end = float(np.linalg.norm(episode.next_observations[-1, OBJECT_SLICE] - goal))
    jerk = float(((np.diff(episode.actions, axis=0)) ** 2).sum(-1).mean()) if len(episode) > 1 else 0.0
    return Outcome(episode.succeeded, 1.0 - d_end / d0, jerk)


def true_return_scores(episodes: Sequence[Episode], windows: int = 1) -> np.ndarray:
    """The environment's own return of each trajectory, ``[N]``; with ``windows`` > 1 per window, ``[N, windows]``.

    The signal the rating teacher reads: ranking by it instead of a learned reward is the oracle upper bound of
    stage 2 (what finetuning reaches when the reward model is perfect).
    """
    rewards = np.stack([e.rewards for e in episodes]).astype(np.float64)
    if windows == 1:
        return rewards.sum(-1)
    edges = window_edges(rewards.shape[-1], windows)
    return np.stack([rewards[:, a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:], strict=True)], -1)


def metric_scores(episodes: Sequence[Episode], smoothness: float = 0.0, log_floor: float = 0.0) -> np.ndarray:
    """The task metric alone for each trajectory, ``[N]``: Σ_t m_t of :func:`progress_steps`.

    That is the final progress 1 − d_T/d_0 (with ``log_floor`` ε > 0: log((d_0 + ε)/(d_T + ε)) / log((d_0 + ε)/ε))
    minus λ·jerk: the fused reward without its learned (rating) part, e.g. to choose a round on.
    """
    return np.array(
        [
            float(progress_steps(e.observations, e.next_observations, e.actions, smoothness, log_floor).sum())
            for e in episodes
        ]
    )


def window_edges(length: int, windows: int) -> np.ndarray:
    """Boundaries of ``windows`` consecutive near-equal windows of ``length`` steps, ``[windows + 1]``."""
    if not 1 <= windows <= length:
        raise ValueError(f"need 1 <= windows <= trajectory length {length}, got windows={windows}")
    return np.linspace(0, length, windows + 1).round().astype(int)


def window_episodes(episode: Episode, windows: int) -> list[Episode]:
    """An episode cut into ``windows`` consecutive windows (the boundaries of :func:`window_edges`)."""
    edges = window_edges(len(episode), windows)
    return [
        Episode(
            episode.observations[a:b],
            episode.actions[a:b],
            episode.rewards[a:b],
            episode.next_observations[a:b],
            episode.success[a:b],
            episode.source,
        )
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
