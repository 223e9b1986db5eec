"""Meta-World v3 environments by task name: seeded single envs, goal variation on or off, scripted experts.

``make_env("button-press-v3", seed=0)`` gives a gymnasium env with 39-d observations, 4-d actions in [-1, 1],
500-step episodes and ``info["success"]``. With ``goal_variation=False`` the env keeps one goal (drawn from the
seed) for every episode; with ``True`` each reset draws one of the task's 50 goals. :class:`ExpertPolicy` wraps
Meta-World's scripted experts with optional Gaussian action noise (seeded), for demonstrations and label sources.
"""

from __future__ import annotations

import difflib
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np


def task_names() -> list[str]:
    """All Meta-World v3 task names."""
    import metaworld

    return sorted(metaworld.ALL_V3_ENVIRONMENTS)


def check_task(task: str) -> str:
    """Return ``task`` if it is a Meta-World v3 task, else raise naming the closest ones."""
    names = task_names()
    if task not in names:
        close = difflib.get_close_matches(task, names, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; valid tasks: {', '.join(names)}"
        raise ValueError(f"unknown Meta-World task {task!r}{hint}")
    return task


def _find_wrapper(env: gym.Env, attribute: str) -> Any:
    layer = env
    while not hasattr(layer, attribute) and hasattr(layer, "env"):
        layer = layer.env
    return layer


def make_env(
    task: str,
    seed: int = 0,
    goal_variation: bool = False,
    render_mode: str | None = None,
    width: int = 128,
    height: int = 128,
    camera_name: str = "corner",
) -> gym.Env:
    """A seeded Meta-World v3 env for one task.

    Args:
        task: task name, e.g. ``"reach-v3"``.
        seed: seeds the goal draw, the env and its spaces.
        goal_variation: draw a new goal (of the task's 50) at every reset; off keeps one goal.
        render_mode: ``"rgb_array"`` for offscreen frames (``MUJOCO_GL=egl`` is set if unset).
        width: frame width when rendering.
        height: frame height when rendering.
        camera_name: Meta-World camera for rendering.
    """
    check_task(task)
    import metaworld  # noqa: F401  (registers the Meta-World environments)

    kwargs: dict[str, Any] = {"env_name": task, "seed": seed, "disable_env_checker": True}
    if render_mode is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        kwargs |= {"render_mode": render_mode, "width": width, "height": height, "camera_name": camera_name}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("Meta-World/MT1", **kwargs)
    selector = _find_wrapper(env, "toggle_sample_tasks_on_reset")
    selector.sample_tasks(seed=seed)  # one goal now, drawn from the seed
    selector.toggle_sample_tasks_on_reset(goal_variation)
    env.action_space.seed(seed)
    if render_mode is not None:  # cheap offscreen frames: no shadows, no multisampling
        model = env.unwrapped.model
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
    return env


def goal_count(env: gym.Env) -> int:
    """How many goals (Meta-World "tasks": object and goal positions) the env's task has (50 for every v3 task)."""
    return len(_find_wrapper(env, "tasks").tasks)


def set_goal(env: gym.Env, index: int) -> None:
    """Put ``env`` on goal ``index`` of its task's goals; the next ``reset()`` starts an episode there.

    Meta-World's ``set_task`` freezes the goal's random vector, and ``reset`` ignores its seed, so the episode's start
    state is a function of the goal alone. With ``goal_variation`` on, the next reset would draw another goal: this is
    meant for envs that keep their goal (the default), such as an evaluation env stepping through a fixed goal list.
    Only this env's own task-select wrapper and simulator are touched (no global random state).
    """
    tasks = _find_wrapper(env, "tasks").tasks
    if not 0 <= index < len(tasks):
        raise IndexError(f"goal index {index} out of range: the task has {len(tasks)} goals")
    env.unwrapped.set_task(tasks[index])


class ExpertPolicy:
    """Meta-World's scripted expert for a task, with Gaussian action noise of standard deviation ``noise``."""

    def __init__(self, task: str, noise: float = 0.0, seed: int = 0):
        from metaworld.policies import ENV_POLICY_MAP

        self.policy = ENV_POLICY_MAP[check_task(task)]()
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The expert's action for ``obs``, plus noise, clipped to [-1, 1]."""
        action = np.asarray(self.policy.get_action(obs), dtype=np.float64)
        if self.noise > 0:
            action = action + self.noise * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0)


def wrapper_chain(env: object) -> list[object]:
    """The wrapper chain of ``env``, from the outermost wrapper to the raw Meta-World env (for saving its state)."""
    chain, layer = [], env
    while layer is not None:
        chain.append(layer)
        layer = getattr(layer, "env", None)
    return chain
