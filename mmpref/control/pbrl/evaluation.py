"""Evaluation of a PbRL policy over distinct goals of its task, the same goals for every method with a seed.

Meta-World v3 resets to one start state per goal whatever the reset seed, and the evaluation policy is
deterministic: repeated episodes on one goal are copies of one episode. :func:`evaluation_goals` fixes distinct goals
from the seed; :func:`evaluate_on_goals` runs one whole episode on each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mmpref.control.envs import set_goal

EVAL_SEED_OFFSET = 10_000  # the evaluation env and its goals are seeded config.seed + 10_000


def is_evaluation_step(step: int, every: int, total_steps: int) -> bool:
    """Whether the loop evaluates after ``step`` environment steps: every ``every`` steps and at the end of the run."""
    return step % every == 0 or step == total_steps


def evaluation_steps(total_steps: int, every: int) -> list[int]:
    """The steps at which :func:`is_evaluation_step` holds, in order (a baseline evaluated without the loop uses them).

    >>> evaluation_steps(7000, 2500), evaluation_steps(1500, 2500)
    ([2500, 5000, 7000], [1500])
    """
    steps = list(range(every, total_steps + 1, every))
    return steps if steps and steps[-1] == total_steps else [*steps, total_steps]


def evaluation_goals(seed: int, count: int, goals: int = 50) -> list[int]:
    """The goals (indices among the task's ``goals``) of evaluation episodes 0 … ``count`` − 1, for run seed ``seed``.

    A permutation of the task's goals drawn from ``seed + 10_000``, of which episode i takes entry i: the goals are
    distinct, the same at every evaluation of a run and in every run with this seed (each PbRL variant, SAC on the
    true reward, the random policy), so curves are compared on identical goals; a larger ``count`` only adds goals.

    >>> evaluation_goals(0, 3) == evaluation_goals(0, 5)[:3]
    True
    """
    if not 1 <= count <= goals:
        raise ValueError(f"eval_episodes must lie in [1, {goals}] (one episode per distinct goal), got {count}")
    order = np.random.default_rng(seed + EVAL_SEED_OFFSET).permutation(goals)
    return [int(g) for g in order[:count]]


def evaluate_on_goals(
    env: Any, act: Callable[[np.ndarray], np.ndarray], goals: Sequence[int], max_steps: int = 500
) -> dict[str, float]:
    """Success rate and mean true return of ``act`` over one whole episode on each of ``goals`` (:func:`set_goal`).

    Success is success at any step (Meta-World's convention). Episodes run to their end (``max_steps`` or the env's
    time limit) even after a success, so that the return is that of the whole episode: a return cut at the first
    success would rank a policy that succeeds early below one that hovers near the goal for 500 steps. Each episode's
    start state is a function of its goal alone (:func:`set_goal`), so the result does not depend on the env's state
    before the call.
    """
    successes, returns = [], []
    for goal in goals:
        set_goal(env, goal)
        obs, _ = env.reset()
        total, success = 0.0, False
        for _ in range(max_steps):
            obs, reward, terminated, truncated, info = env.step(act(obs))
            total += float(reward)
            success = success or info.get("success", 0.0) > 0
            if terminated or truncated:
                break
        successes.append(success)
        returns.append(total)
    return {"success_rate": float(np.mean(successes)), "eval_return": float(np.mean(returns))}
