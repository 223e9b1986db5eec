"""The rollout side of the PbRL loop: the reward the policy is given, and the transitions recorded for queries.

:class:`RewardSource` is the true reward, the learned reward ((r̂ − shift) · scale, r̂ the members' mean − λ · their
std) or PEBBLE's state-entropy bonus (log(1 + distance to the k-th nearest recent state)); :class:`PreferenceEnv`
wraps the environment with it and keeps recent true-reward episodes for the fragmenter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from mmpref.control.reward import RewardEnsemble
from mmpref.control.segments import Episode


class RewardSource:
    """What the policy is trained on: the true reward, the learned reward, or the state-entropy bonus."""

    def __init__(
        self,
        mode: Literal["true", "learned", "entropy"] = "true",
        ensemble: RewardEnsemble | None = None,
        k: int = 5,
        memory: int = 10_000,
        scale: float = 1.0,
        pessimism: float = 0.0,
    ):
        self.mode = mode
        self.ensemble = ensemble
        # learned reward given to the policy = (r̂ − shift) · scale, r̂ = members' mean − pessimism · std; the loop
        # refits shift and scale after each reward update when it standardises the reward
        self.shift, self.scale, self.pessimism = 0.0, scale, pessimism
        self.k = k
        self.states: deque[np.ndarray] = deque(maxlen=memory)
        # an exploration bonus hook (RUNE): (ensemble, observations, actions, step) -> [N], added after the affine map
        self.bonus: Callable[[RewardEnsemble, np.ndarray, np.ndarray, int], np.ndarray] | None = None
        self.steps = 0  # environment steps seen (the t of a decaying bonus)

    def __call__(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, true_reward: float) -> float:
        """The reward of one transition under the current mode."""
        self.steps += 1
        if self.mode == "true":
            return true_reward
        if self.mode == "learned":
            return float(self.learned(obs[None], action[None])[0])
        # PEBBLE's unsupervised phase: the distance to the k-th nearest recent state (a state-entropy estimate)
        self.states.append(np.asarray(next_obs, np.float32))
        if len(self.states) <= self.k:
            return 0.0
        distances = np.linalg.norm(np.asarray(self.states)[:-1] - next_obs, axis=1)
        return float(np.log(1.0 + np.partition(distances, self.k - 1)[self.k - 1]))

    def raw_learned(self, observations: np.ndarray, actions: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """r̂ of transitions ``[N, o]``, ``[N, a]`` → ``[N]`` before the affine map (in chunks, for whole buffers)."""
        parts = [
            self.ensemble.step_reward(observations[i : i + chunk], actions[i : i + chunk], self.pessimism)
            for i in range(0, len(observations), chunk)
        ]
        return np.concatenate(parts)

    def affine(self, raw: np.ndarray) -> np.ndarray:
        """(r̂ − shift) · scale: what the policy gets for raw learned rewards."""
        return (raw - self.shift) * self.scale

    def learned(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The learned reward the policy gets for transitions ``[N, o]``, ``[N, a]`` → ``[N]``."""
        return self.affine(self.raw_learned(observations, actions)) + self.exploration(observations, actions)

    def exploration(self, observations: np.ndarray, actions: np.ndarray, chunk: int = 4096) -> np.ndarray | float:
        """Scale · the bonus hook's value at the current step (0 without a bonus)."""
        if self.bonus is None:
            return 0.0
        parts = [
            self.bonus(self.ensemble, observations[i : i + chunk], actions[i : i + chunk], self.steps)
            for i in range(0, len(observations), chunk)
        ]
        return self.scale * np.concatenate(parts)


class PreferenceEnv(gym.Wrapper):
    """Gives the policy the reward of a :class:`RewardSource` and records true-reward transitions for queries."""

    def __init__(self, env: gym.Env, source: RewardSource, memory_steps: int = 20_000):
        super().__init__(env)
        self.source = source
        self.episodes: deque[Episode] = deque()
        self.memory_steps = memory_steps
        self._current: dict[str, list] = {}
        self._obs: np.ndarray | None = None
        self.true_returns: list[float] = []
        self.successes: list[bool] = []
        # records simulator states for rendering queried segments later (a human teacher's clips); None: nothing
        self.recorder: Any = None

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        """Reset the env and start recording a new episode."""
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        self._current = {k: [] for k in ("obs", "act", "rew", "next", "succ")}
        if self.recorder is not None:
            self._current |= {"state": [], "scene": [self.recorder.scene(self.env)]}
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step with the source's reward; the true reward stays in ``info["true_reward"]``."""
        if "state" in self._current:  # before the step: aligned with the observation the action answers
            self._current["state"].append(self.recorder.state(self.env))
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        reward = self.source(self._obs, np.asarray(action, np.float32), obs, float(true_reward))
        for key, value in (
            ("obs", self._obs),
            ("act", action),
            ("rew", true_reward),
            ("next", obs),
            ("succ", info.get("success", 0.0)),
        ):
            self._current[key].append(value)
        self._obs = obs
        info = dict(info, true_reward=float(true_reward))
        if terminated or truncated:
            self._finish()
        return obs, reward, terminated, truncated, info

    def _episode_so_far(self) -> Episode | None:
        c = self._current
        if not c.get("act"):
            return None
        return Episode(
            np.asarray(c["obs"], np.float32),
            np.asarray(c["act"], np.float32),
            np.asarray(c["rew"], np.float32),
            np.asarray(c["next"], np.float32),
            np.asarray(c["succ"], np.float32),
            source="rollout",
            states=np.asarray(c["state"]) if c.get("state") else None,
            scene=c["scene"][0] if c.get("scene") else None,
        )

    def recent_episodes(self) -> list[Episode]:
        """Finished episodes in memory plus the one in progress (queries need not wait for an episode's end)."""
        current = self._episode_so_far()
        return list(self.episodes) + ([current] if current is not None else [])

    def _finish(self) -> None:
        c = self._current
        episode = self._episode_so_far()
        if episode is None:
            return
        self.episodes.append(episode)
        self.true_returns.append(float(episode.rewards.sum()))
        self.successes.append(episode.succeeded)
        while sum(len(e) for e in self.episodes) > self.memory_steps:
            self.episodes.popleft()
        self._current = {k: [] for k in c}
