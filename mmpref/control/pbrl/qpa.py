r"""QPA: query-policy alignment, as a part of the PbRL loop.

Hu, Li, Zhan, Jia & Zhang (2023), "Query-Policy Misalignment in Preference-Based Reinforcement Learning" (ICLR 2024
/ arXiv 2305.17400), §5. Queries chosen for informativeness over the whole replay buffer are often about behaviour the
current policy no longer produces, so the labels barely help the policy. QPA's two fixes:

**Policy-aligned query selection.** Query segments are drawn (uniformly) only from the policy-aligned buffer
𝒟^pa, the N most recent episodes: with episodes e_1 … e_E in arrival order,

.. math:: \mathcal D^{pa} = \{e_{E-N+1}, \dots, e_E\}

(the episode in progress counts as the newest one).

**Hybrid experience replay.** Each SAC minibatch of B transitions takes ⌈ω·B⌉ from 𝒟^pa (the last N·T stored
transitions, T the episode length) and the rest uniformly from the whole replay buffer 𝒟, so the value function is
accurate where the current policy (and hence the new queries) live. ω = ½ (half and half).

QPA also uses SURF's temporal-cropping augmentation; here that is the separate ``surf`` part. Defaults: N = 10,
ω = 0.5 (≈, from the paper's description).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer

from mmpref.control.segments import Episode


def policy_aligned(episodes: list[Episode], recent: int) -> list[Episode]:
    """𝒟^pa: the ``recent`` newest episodes (all of them if fewer exist)."""
    if recent < 1:
        raise ValueError(f"qpa_recent_episodes must be >= 1, got {recent}")
    return list(episodes[-recent:])


def hybrid_indices(
    batch: int, pos: int, size: int, capacity: int, window: int, ratio: float, rng: np.random.RandomState
) -> np.ndarray:
    """Buffer rows of one hybrid minibatch: ⌈ratio · batch⌉ among the ``window`` newest, the rest uniform.

    Args:
        batch: minibatch size B.
        pos: the next write position of the ring buffer (the newest row is ``pos − 1``).
        size: rows filled (``capacity`` once the ring has wrapped).
        capacity: the ring's length.
        window: rows of 𝒟^pa (clipped to ``size``).
        ratio: ω, the share of the minibatch from 𝒟^pa.
        rng: numpy's legacy generator (stable-baselines3 seeds the global one).
    """
    recent = int(np.ceil(ratio * batch))
    window = max(1, min(window, size))
    back = rng.randint(0, window, size=recent)  # 0 = the newest row
    aligned = (pos - 1 - back) % capacity
    uniform = rng.randint(0, size, size=batch - recent)
    return np.concatenate([aligned, uniform])


class HybridReplayBuffer(ReplayBuffer):
    """stable-baselines3's replay buffer with QPA's hybrid sampling (give it ``window`` and ``ratio``)."""

    def __init__(self, *args: Any, window: int = 5000, ratio: float = 0.5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not 0 <= ratio <= 1 or window < 1:
            raise ValueError(f"qpa_hybrid_ratio must lie in [0, 1] and the window be >= 1, got {ratio}, {window}")
        if self.optimize_memory_usage:
            raise ValueError("hybrid replay does not support optimize_memory_usage=True")
        self.window, self.ratio = window, ratio

    def sample(self, batch_size: int, env: Any = None) -> Any:
        """A minibatch with ω of its rows from the newest ``window`` transitions."""
        size = self.buffer_size if self.full else self.pos
        rows = hybrid_indices(batch_size, self.pos, size, self.buffer_size, self.window, self.ratio, np.random)
        return self._get_samples(rows, env=env)


class QPA:
    """The QPA part: policy-aligned query candidates and (through the SAC settings) hybrid experience replay.

    Args:
        recent_episodes: N, episodes in the policy-aligned buffer.
        hybrid_ratio: ω, the share of each SAC minibatch from 𝒟^pa (0 disables hybrid replay).
    """

    name = "qpa"

    def __init__(self, recent_episodes: int = 10, hybrid_ratio: float = 0.5):
        if recent_episodes < 1 or not 0 <= hybrid_ratio <= 1:
            raise ValueError(
                f"qpa_recent_episodes must be >= 1 and qpa_hybrid_ratio in [0, 1], got {recent_episodes}, "
                f"{hybrid_ratio}"
            )
        self.recent, self.ratio = recent_episodes, hybrid_ratio

    def query_episodes(self, episodes: list[Episode]) -> list[Episode]:
        """Query candidates come from 𝒟^pa only."""
        return policy_aligned(episodes, self.recent)

    def sac_kwargs(self, episode_length: int) -> dict[str, Any]:
        """The SAC settings of hybrid replay (none when ω = 0)."""
        if self.ratio == 0:
            return {}
        window = self.recent * episode_length
        return {
            "replay_buffer_class": HybridReplayBuffer,
            "replay_buffer_kwargs": {"window": window, "ratio": self.ratio},
        }

    def state_dict(self) -> dict:
        """QPA keeps no state of its own."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""
