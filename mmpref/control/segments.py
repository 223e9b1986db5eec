"""Rollouts and segments: episodes from any policy, cut into equal-length segments and random segment pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from mmpref.data import Segment, SegmentPair


@dataclass(frozen=True)
class Episode:
    """One episode: observations ``[T, o]`` (before each action), actions ``[T, a]``, rewards ``[T]``, success.

    ``states`` ``[T, s]`` (the simulator state before each action) and ``scene`` (the episode's model edits) are
    recorded only when segments must be rendered later (:mod:`mmpref.control.pbrl.clips`); ``None`` otherwise.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    success: np.ndarray
    source: str = ""
    states: np.ndarray | None = None
    scene: dict | None = None

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def succeeded(self) -> bool:
        """Whether ``info["success"]`` was 1 at any step."""
        return bool(self.success.any())


def rollout(
    env: gym.Env,
    policy: Callable[[np.ndarray], np.ndarray],
    max_steps: int = 500,
    seed: int | None = None,
    source: str = "",
) -> Episode:
    """Run one episode (until termination, truncation or ``max_steps``)."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, next_obs, success = [], [], [], [], []
    for _ in range(max_steps):
        action = policy(obs)
        new_obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        next_obs.append(new_obs)
        success.append(float(info.get("success", 0.0)))
        obs = new_obs
        if terminated or truncated:
            break
    return Episode(
        np.asarray(observations, np.float32),
        np.asarray(actions, np.float32),
        np.asarray(rewards, np.float32),
        np.asarray(next_obs, np.float32),
        np.asarray(success, np.float32),
        source,
    )


def cut_segments(episodes: Sequence[Episode], length: int, stride: int | None = None) -> list[Segment]:
    """Cut episodes into segments of ``length`` steps every ``stride`` steps (default: non-overlapping)."""
    if length < 1:
        raise ValueError(f"segment length must be >= 1, got {length}")
    stride = stride or length
    return [
        episode_segment(episode, start, length, f"{episode.source or 'ep'}{e}:{start}")
        for e, episode in enumerate(episodes)
        for start in range(0, len(episode) - length + 1, stride)
    ]


def episode_segment(episode: Episode, start: int, length: int, segment_id: str) -> Segment:
    """Steps ``start`` to ``start + length`` of ``episode`` as a :class:`~mmpref.data.Segment` named ``segment_id``."""
    end = start + length
    return Segment(
        id=segment_id,
        observations=episode.observations[start:end],
        actions=episode.actions[start:end],
        rewards=episode.rewards[start:end],
        source=episode.source,
        start=start,
    )


def random_pairs(segments: Sequence[Segment], n: int, rng: np.random.Generator) -> list[SegmentPair]:
    """N random pairs of distinct segments, unlabelled (label 0.5 until a teacher answers)."""
    if len(segments) < 2:
        raise ValueError("need at least two segments to make pairs")
    pairs = []
    for k in range(n):
        i, j = rng.choice(len(segments), 2, replace=False)
        pairs.append(SegmentPair(id=f"pair{k}", a=segments[i], b=segments[j], label=0.5))
    return pairs
