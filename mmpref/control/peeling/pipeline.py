"""The whole peeling-style pipeline for one Meta-World task and seed (``mmpref peeling`` runs it).

Stage 1: scripted-expert demonstrations with Gaussian action noise drawn per episode from
[``noise_low``, ``noise_high``] (so the demonstrations' quality varies, as in robomimic's mixed-quality sets), written
to and read back from a robomimic HDF5 file, then behaviour cloning. Stage 2: stochastic rollouts of the BC policy
from fixed-goal environments are rated 1..``rating_levels`` on their true return by a
:class:`~mmpref.control.teachers.RatingTeacher` (trajectory level); the fused reward (object-to-goal progress per step
+ a learned step reward, :mod:`mmpref.control.peeling.fused_reward`) is trained on those ratings; then online
trajectory DPO (:mod:`mmpref.control.peeling.finetune`) against the frozen BC policy (whole policy or a residual on it;
rollouts ranked window by window with ``windows`` > 1). Both policies are evaluated on the same held-out goals,
sampled and with the mean action (:mod:`mmpref.control.peeling.evaluation`). ``scripts/bench_peeling.py`` runs this
for several seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mmpref.control.bc import behaviour_cloning
from mmpref.control.envs import ExpertPolicy, make_env
from mmpref.control.peeling.config import PeelingConfig
from mmpref.control.peeling.dpo import frozen_copy
from mmpref.control.peeling.evaluation import RoundTracker, evaluate_held_out, held_out_results, validation_pool
from mmpref.control.peeling.finetune import FinetuneLog, mean_total, preference_finetune, validation_rollouts
from mmpref.control.peeling.fused_reward import RewardRefit, fit_fused_reward, score_trajectories
from mmpref.control.peeling.metric import metric_scores, true_return_scores
from mmpref.control.policies import GaussianPolicy, ResidualPolicy, censored_copy, copy_policy
from mmpref.control.robomimic_io import read_robomimic, write_robomimic
from mmpref.control.segments import Episode, rollout
from mmpref.control.teachers import RatingTeacher
from mmpref.reward.system import RewardModelSystem


def collect_demonstrations(config: PeelingConfig, dataset: Path) -> list[Episode]:
    """The scripted expert's demonstrations with per-episode noise, written to and read back from ``dataset``.

    Deterministic in ``config.seed``: noise levels U[noise_low, noise_high], one fixed-goal-varying env.
    """
    rng = np.random.default_rng(config.seed)
    env = make_env(config.task, seed=10_000 + config.seed, goal_variation=True)
    noises = rng.uniform(config.noise_low, config.noise_high, config.demos)
    demos = [
        rollout(
            env,
            ExpertPolicy(config.task, noise=float(n), seed=1000 * config.seed + i),
            max_steps=config.max_steps,
            source="demo",
        )
        for i, n in enumerate(noises)
    ]
    return read_robomimic(write_robomimic(dataset, demos, config.task, qualities=noises))


@dataclass
class RatedSet:
    """The rated BC rollouts the fused reward is fit on, their ratings and the teacher that gave them."""

    episodes: list[Episode]
    ratings: list[int]
    teacher: RatingTeacher


@dataclass
class StageOne:
    """What stage 1 hands to stage 2."""

    policy: GaussianPolicy
    reward: RewardModelSystem
    results: dict[str, Any]
    timings: dict[str, float]
    demonstrations: list[Episode]
    rated: RatedSet


def rate_bc_rollouts(
    config: PeelingConfig, act: Callable[[np.ndarray], np.ndarray], pool: Sequence[gym.Env]
) -> RatedSet:
    """``rated`` rollouts of ``act`` cycling through ``pool``, rated on their true return.

    ``act``: the BC policy sampled, ``numpy_policy(seed=config.seed)``. The teacher's edges sit at the quantiles of
    these returns (``rating_levels`` levels). Deterministic in the seed, the policy and the pool's state (a fresh
    :func:`training_pool` and callable give the same set again); ``act`` keeps drawing where the set left off.
    """
    rated = [rollout(pool[i % len(pool)], act, max_steps=config.max_steps) for i in range(config.rated)]
    returns = [float(e.rewards.sum()) for e in rated]
    teacher = RatingTeacher.from_returns(
        returns, levels=config.rating_levels, noise=config.rating_noise, seed=config.seed
    )
    return RatedSet(rated, [teacher.rate(e.rewards) for e in rated], teacher)


def stage_one(config: PeelingConfig, pool: Sequence[gym.Env], dataset: Path) -> StageOne:
    """Demonstrations (through ``dataset``, robomimic HDF5), BC, the rated set and fused reward, BC's evaluation."""
    task, seed, steps = config.task, config.seed, config.max_steps
    timings: dict[str, float] = {}
    start = time.perf_counter()
    demos = collect_demonstrations(config, dataset)
    timings["demos_s"] = time.perf_counter() - start

    start = time.perf_counter()
    torch.manual_seed(seed)
    policy = GaussianPolicy(hidden=config.hidden, squash=config.squash)
    bc = behaviour_cloning(
        policy,
        np.concatenate([d.observations for d in demos]),
        np.concatenate([d.actions for d in demos]),
        epochs=config.bc_epochs,
        lr=1e-3,
        seed=seed,
        trainer=config.trainer,
    )
    timings["bc_s"] = time.perf_counter() - start

    start = time.perf_counter()
    act = policy.numpy_policy(deterministic=False, seed=seed)
    rated = rate_bc_rollouts(config, act, pool)
    reward = fit_fused_reward(
        rated.episodes,
        rated.ratings,
        config.smoothness,
        epochs=config.reward_epochs,
        seed=seed,
        log_floor=config.log_floor,
        trainer=config.trainer,
    )
    timings["reward_s"] = time.perf_counter() - start
    # how well the fused reward orders 16 fresh rollouts (the same sampler, drawing on) by their true return
    check = [rollout(pool[i % len(pool)], act, max_steps=steps) for i in range(16)]
    fused = score_trajectories(reward, check, config.smoothness, log_floor=config.log_floor)
    true = np.array([e.rewards.sum() for e in check])
    agree = [(fused[i] - fused[j]) * (true[i] - true[j]) > 0 for i in range(16) for j in range(i + 1, 16)]

    results: dict[str, Any] = {"task": task, "seed": seed, "bc_log_likelihood": bc.log_likelihood_after}
    results["demo_success"] = float(np.mean([d.succeeded for d in demos]))
    results["reward_pair_accuracy"] = float(np.mean(agree))
    results["metric_weight"] = float(reward.scorer.metric_weight.detach())
    results |= held_out_results(policy, config, "bc")
    return StageOne(policy, reward, results, timings, demos, rated)


RESTART_STRIDE = 100_000  # apart from every seed a benchmark uses, so restarts of one seed never share another's


def restart_seed(seed: int, restart: int) -> int:
    """Stage 2's seed in restart ``restart``: ``seed`` + 100 000·restart (restart 0 explores as a plain run)."""
    return seed + RESTART_STRIDE * restart


def best_restart(scores: Sequence[float]) -> int:
    """Index of the restart to keep: the highest validation score of its kept round, the earliest of equal ones."""
    if len(scores) == 0:
        raise ValueError("best_restart needs the validation score of at least one restart")
    return int(np.argmax(scores))


def restart_choice_score(
    policy: GaussianPolicy, config: PeelingConfig, score: Callable[[Sequence[Episode]], np.ndarray]
) -> float:
    """Mean ``score`` of the mean-action policy's rollouts from ``config.restart_validation`` validation goals."""
    envs = validation_pool(config, config.restart_validation)
    return mean_total(score, validation_rollouts(policy, envs, config.max_steps))


def stage_two(
    config: PeelingConfig,
    policy: GaussianPolicy,
    reward: RewardModelSystem,
    pool: Sequence[gym.Env],
    demonstrations: Sequence[Episode] = (),
    rated: RatedSet | None = None,
) -> tuple[dict[str, Any], GaussianPolicy]:
    """Finetune against a frozen copy of the BC ``policy``; evaluate; check the reference stayed put.

    ``rated`` (stage 1's rated set, copied, not changed) is needed with ``config.refit_rated`` > 0: the refits
    start from it and rate with its teacher.

    With ``config.restarts`` > 1 stage 2 runs that many times from BC (restart r explores with
    :func:`restart_seed`; the restarts are ``first_restart`` .. ``first_restart + restarts − 1``) and the run whose
    kept round scores best on the validation goals (or on ``restart_validation`` goals:
    :func:`restart_choice_score`) is kept (:func:`best_restart`); only it is evaluated in full (sampled and mean
    action) on the held-out goals.
    ``results["restarts"]`` lists every restart's seed, kept round, validation (and choice) score and (for
    diagnosis: the choice never reads it) its mean-action success on the held-out goals, and
    ``results["restart_kept"]`` the index kept (also with one restart where ``first_restart`` > 0 or
    ``restart_validation`` > 0, so split runs can be combined).

    Returns:
        The results and the finetuned policy: ``policy`` itself, changed in place, or a new one (``policy``
        unchanged) with ``censored`` (a censored copy), ``residual_hidden`` > 0 (a
        :class:`~mmpref.control.policies.ResidualPolicy` on a frozen copy) or ``restarts`` > 1 (each restart
        trains a copy).
    """
    if config.censored and config.squash == "clip":
        policy = censored_copy(policy)
    reference = frozen_copy(policy)
    reference_state = {k: v.clone() for k, v in reference.state_dict().items()}
    start = time.perf_counter()
    if config.oracle:
        rank = lambda group: true_return_scores(group, config.windows)  # noqa: E731
    else:
        rank = lambda group: score_trajectories(  # noqa: E731
            reward, group, config.smoothness, config.windows, config.log_floor
        )
    validation_reward = (
        (lambda e: metric_scores(e, config.smoothness, config.log_floor)) if config.select_on == "metric" else None
    )
    summaries: list[dict[str, Any]] = []
    kept: tuple[GaussianPolicy, FinetuneLog, RoundTracker | None, int] | None = None
    kept_score = float("nan")
    for restart in range(config.first_restart, config.first_restart + config.restarts):
        seed = restart_seed(config.seed, restart)
        candidate = policy if config.restarts == 1 else copy_policy(policy)
        if config.residual_hidden > 0:
            if restart > 0:  # the residual's initialisation too is the restart's own (restart 0: as a plain run)
                torch.manual_seed(seed)
            candidate = ResidualPolicy.on(candidate, config.residual_hidden)
        refit = None
        if config.refit_rated > 0:
            if rated is None:
                raise ValueError("refit_rated > 0 needs stage 1's rated set (rated=...) to refit the fused reward on")
            refit = RewardRefit(
                rated.teacher,
                list(rated.episodes),
                list(rated.ratings),
                config.refit_rated,
                config.smoothness,
                config.windows,
                config.reward_epochs,
                seed,  # the restart's own choice of rated rollouts too (restart 0: config.seed)
                config.log_floor,
                config.trainer,
            )
        tracker = RoundTracker(config, rank) if config.track_rounds else None
        log = preference_finetune(
            candidate,
            reference,
            pool,
            rank,
            replace(config.finetune(), seed=seed),
            validation=validation_pool(config),
            demonstrations=demonstrations,
            refit=refit,
            on_round=tracker,
            validation_reward=validation_reward,
        )
        score = log.validation[log.kept_round] if log.validation else float("nan")
        summary = {"restart": restart, "seed": seed, "kept_round": log.kept_round, "validation": score}
        if config.restart_validation > 0:
            summary["choice"] = score = restart_choice_score(candidate, config, validation_reward or rank)
        if config.restarts > 1:  # diagnosis only (did the choice keep the best?): nothing is chosen on it
            held_out = evaluate_held_out(candidate, config, deterministic=True)
            summary["held_out_mean"] = {k: held_out[k] for k in ("success", "goal_success")}
        summaries.append(summary)
        # only the best restart so far is held: the first of equal scores, as best_restart chooses
        if kept is None or best_restart([kept_score, score]) == 1:
            kept, kept_score = (candidate, log, tracker, restart), score
    assert kept is not None  # restarts >= 1
    policy, log, tracker, kept_restart = kept
    results: dict[str, Any] = {"finetune_s": time.perf_counter() - start, "finetune_log": asdict(log)}
    if config.restarts > 1 or config.first_restart > 0 or config.restart_validation > 0:
        results["restarts"] = summaries
        results["restart_kept"] = kept_restart
    if tracker is not None:
        results["rounds"] = tracker.record()
    state = reference.state_dict()
    results["reference_unchanged"] = all(torch.equal(v, state[k]) for k, v in reference_state.items())
    results |= held_out_results(policy, config, "ft")
    if config.explore_temperature != 1.0:  # the baseline that finetuning at a lower σ must beat: BC sampled there
        results["bc_tempered_sample"] = evaluate_held_out(reference, config, False, config.explore_temperature)
    return results, policy
