"""How the peeling pipeline scores a policy: on held-out goals, with the mean action and sampled.

Also the fixed-goal training and validation environments, and the per-round record of :class:`RoundTracker`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from mmpref.control.envs import make_env
from mmpref.control.peeling.config import PeelingConfig
from mmpref.control.peeling.dpo import trajectory_totals
from mmpref.control.peeling.finetune import validation_rollouts
from mmpref.control.peeling.metric import GOAL_SLICE, OBJECT_SLICE, Outcome, outcome
from mmpref.control.policies import (
    GaussianPolicy,
)
from mmpref.control.segments import Episode, rollout


def evaluate_policy(
    policy: GaussianPolicy,
    task: str,
    seed: int,
    episodes: int,
    max_steps: int,
    deterministic: bool,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Success rate, mean final progress and jerk over ``episodes`` distinct goals of a fresh env seeded ``seed``.

    A fresh env per call gives every policy the same goal sequence (so two policies' ``goal_success`` lists, 0/1 per
    goal, pair up); ``temperature`` scales σ of sampled actions. A Meta-World task draws its goals from a fixed set
    of 50 (with replacement: 30 draws hold only ~22 distinct start states), so an episode whose object and goal
    positions were already evaluated is dropped and another drawn: each goal counts once.
    """
    env = make_env(task, seed=seed, goal_variation=True)
    act = policy.numpy_policy(deterministic=deterministic, seed=seed, temperature=temperature)
    results: list[Outcome] = []
    seen: set[tuple[float, ...]] = set()
    draws = 0
    while len(results) < episodes:
        if draws == 20 * episodes:
            raise ValueError(
                f"{task}: only {len(results)} distinct goals in {draws} draws (env seed {seed}); a Meta-World task "
                f"has at most 50: lower eval_episodes to <= {len(results)}"
            )
        draws += 1
        episode = rollout(env, act, max_steps=max_steps)
        start = tuple(np.round(episode.observations[0, np.r_[OBJECT_SLICE, GOAL_SLICE]], 4).tolist())
        if start not in seen:
            seen.add(start)
            results.append(outcome(episode))
    return {
        "success": float(np.mean([r.success for r in results])),
        "progress": float(np.mean([r.progress for r in results])),
        "jerk": float(np.mean([r.jerk for r in results])),
        "goal_success": [int(r.success) for r in results],
        "draws": draws,
    }


def evaluate_held_out(
    policy: GaussianPolicy, config: PeelingConfig, deterministic: bool, temperature: float = 1.0
) -> dict[str, Any]:
    """:func:`evaluate_policy` on the run's held-out goals (env seed 30 000 + seed, ``eval_episodes`` of them)."""
    return evaluate_policy(
        policy, config.task, 30_000 + config.seed, config.eval_episodes, config.max_steps, deterministic, temperature
    )


def held_out_results(policy: GaussianPolicy, config: PeelingConfig, prefix: str) -> dict[str, dict[str, Any]]:
    """The policy sampled and with its mean action on the held-out goals: ``{prefix}_sample``, ``{prefix}_mean``."""
    return {
        f"{prefix}_{mode}": evaluate_held_out(policy, config, det) for mode, det in (("sample", False), ("mean", True))
    }


def training_pool(config: PeelingConfig) -> list[gym.Env]:
    """The fixed-goal environments of stage 2 (their goals differ from the evaluation's)."""
    return [make_env(config.task, seed=20_000 + 100 * config.seed + g) for g in range(config.pool)]


def validation_pool(config: PeelingConfig, size: int | None = None) -> list[gym.Env]:
    """Fixed-goal environments for choosing the finetuning round (goals differ from the pool's and evaluation's).

    ``size`` (default ``config.validation``) goals; a larger pool starts with the same ones.
    """
    count = config.validation if size is None else size
    return [make_env(config.task, seed=50_000 + 100 * config.seed + g) for g in range(count)]


class RoundTracker:
    """``config.track_rounds``' record of every round's mean-action policy (an ``on_round`` hook).

    Per round, ``held_out``: success, mean final progress and per-goal success on the held-out goals (the same as
    the final evaluation's); ``validation``: per goal, the ranker's whole-trajectory score (``rank``: the fused
    reward of stage 1, or the true return with ``oracle``; with a refit not the round's own reward), final progress
    and success on ``max(config.validation, 16)`` validation goals.
    """

    def __init__(self, config: PeelingConfig, rank: Callable[[Sequence[Episode]], np.ndarray]) -> None:
        self.config, self.rank = config, rank
        self.validation = validation_pool(config, max(config.validation, 16))
        self.held_out: list[dict[str, Any]] = []
        self.scores: list[dict[str, list[float]]] = []

    def __call__(self, round_index: int, policy: GaussianPolicy) -> None:
        """Record round ``round_index`` (``policy`` is not changed)."""
        held_out = evaluate_held_out(policy, self.config, deterministic=True)
        self.held_out.append({k: held_out[k] for k in ("success", "progress", "goal_success")})
        episodes = validation_rollouts(policy, self.validation, self.config.max_steps)
        results = [outcome(e) for e in episodes]
        self.scores.append(
            {
                "fused": [float(x) for x in trajectory_totals(self.rank(episodes))],
                "progress": [float(r.progress) for r in results],
                "success": [float(r.success) for r in results],
            }
        )

    def record(self) -> dict[str, Any]:
        """The per-round lists, for a results dict."""
        return {"held_out": self.held_out, "validation": self.scores}
