"""Custom gymnasium environments of mmpref, importable as ``mmpref_envs`` (source in ``envs/mmpref_envs``).

``gymnasium.make("mmpref_envs/DeliveryGrid-v0", seed=3)`` gives a random delivery gridworld; the tabular MDP behind
it (``env.unwrapped.tabular``) gives exact optimal values for regret-model experiments.
"""

from __future__ import annotations

import gymnasium as gym

from mmpref_envs.delivery import FEATURES, MOVES, DeliveryGrid, DeliveryGridEnv
from mmpref_envs.tabular import (
    TabularMDP,
    greedy_policy,
    policy_iteration,
    policy_values,
    successor_features,
    value_iteration,
)

# gymnasium's own convention: an id per env, registered once when the package is imported
if "mmpref_envs/DeliveryGrid-v0" not in gym.registry:
    gym.register(id="mmpref_envs/DeliveryGrid-v0", entry_point="mmpref_envs.delivery:DeliveryGridEnv")

__all__ = [
    "FEATURES",
    "MOVES",
    "DeliveryGrid",
    "DeliveryGridEnv",
    "TabularMDP",
    "greedy_policy",
    "policy_iteration",
    "policy_values",
    "successor_features",
    "value_iteration",
]
