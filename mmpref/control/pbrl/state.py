"""What a PbRL checkpoint stores beyond the models: stable-baselines3's Monitor bookkeeping, the environments' state.

The simulator state (qpos, qvel, mocap) plus every wrapper's small attributes (step counters, reset flags, random
generators), so that a resumed loop continues exactly where it stopped.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from mmpref.control.envs import wrapper_chain


def silence_logger(model: Any) -> None:
    """A logger with no outputs: stable-baselines3's default one makes an empty log folder per ``learn()`` call."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))


MONITOR_FIELDS = ("rewards", "needs_reset", "episode_returns", "episode_lengths", "episode_times", "total_steps")


def monitor_state(model: Any) -> dict[str, Any]:
    """The episode bookkeeping of stable-baselines3's Monitor around the training env."""
    monitor = model.env.envs[0]
    return {name: getattr(monitor, name) for name in MONITOR_FIELDS}


def set_monitor_state(model: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`monitor_state` saved."""
    monitor = model.env.envs[0]
    for name, value in state.items():
        setattr(monitor, name, value)


def env_state(env: gym.Env) -> dict[str, Any]:
    """Simulator state plus every wrapper's small attributes (step counters, reset flags, random generators)."""
    data = env.unwrapped.data
    return {
        **{name: getattr(data, name).copy() for name in DATA_FIELDS},
        # a goal change rewrites the goal site in the model (reset_model); the solver's warm start and the last
        # controls decide the next steps' last digits, so an exact resume needs them too
        "site_pos": env.unwrapped.model.site_pos.copy(),
        "layers": [{k: v for k, v in vars(layer).items() if _plain(v)} for layer in wrapper_chain(env)],
    }


DATA_FIELDS = ("qpos", "qvel", "mocap_pos", "mocap_quat", "act", "ctrl", "qacc_warmstart")


def set_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restore what :func:`env_state` saved and recompute the simulator's derived quantities."""
    import mujoco

    for layer, attributes in zip(wrapper_chain(env), state["layers"], strict=True):
        for key, value in attributes.items():
            setattr(layer, key, value)
    unwrapped = env.unwrapped
    for name in DATA_FIELDS:
        if name in state:  # checkpoints written before act, ctrl and the warm start were saved lack them
            getattr(unwrapped.data, name)[:] = state[name]
    if "site_pos" in state:
        unwrapped.model.site_pos[:] = state["site_pos"]
    mujoco.mj_forward(unwrapped.model, unwrapped.data)
    if "qacc_warmstart" in state:  # mj_forward rewrites the warm start from its own solve: put the saved one back
        unwrapped.data.qacc_warmstart[:] = state["qacc_warmstart"]


def _plain(value: Any) -> bool:
    """Picklable, small pieces of env state (numbers, arrays, random generators), not models or renderers."""
    plain = (int, float, bool, str, np.ndarray, np.random.Generator, tuple, list, deque)
    return value is None or (isinstance(value, plain) and not isinstance(value, gym.Env))
