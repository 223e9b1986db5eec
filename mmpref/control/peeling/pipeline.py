"""The whole peeling-style pipeline for one Meta-World task and seed, and the ``mmpref peeling`` job.

Stage 1: scripted-expert demonstrations with Gaussian action noise drawn per episode from
[``noise_low``, ``noise_high``] (so the demonstrations' quality varies, as in robomimic's mixed-quality sets), written
to and read back from a robomimic HDF5 file, then behaviour cloning. Stage 2: stochastic rollouts of the BC policy
from fixed-goal environments are rated 1..``rating_levels`` on their true return by a
:class:`~mmpref.control.teachers.RatingTeacher` (trajectory level); the fused reward (object-to-goal progress per step
+ a learned step reward, :mod:`mmpref.control.peeling.finetune`) is trained on those ratings; then online trajectory DPO
against the frozen BC policy (whole policy or a residual on it; rollouts ranked window by window with ``windows`` >
1). Both policies are evaluated on the same held-out goals, sampled and with the mean
action. ``scripts/bench_peeling.py`` runs this for several seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from mmpref.control.envs import ExpertPolicy, make_env
from mmpref.control.peeling.finetune import (
    GOAL_SLICE,
    OBJECT_SLICE,
    FinetuneConfig,
    FinetuneLog,
    Outcome,
    RewardRefit,
    WindowCredit,
    fit_fused_reward,
    frozen_copy,
    mean_total,
    metric_scores,
    outcome,
    preference_finetune,
    score_trajectories,
    trajectory_totals,
    true_return_scores,
    validation_rollouts,
)
from mmpref.control.policies import (
    GaussianPolicy,
    ResidualPolicy,
    Squash,
    behaviour_cloning,
    censored_copy,
    copy_policy,
    save_policy,
)
from mmpref.control.robomimic_io import read_robomimic, write_robomimic
from mmpref.control.segments import Episode, rollout
from mmpref.control.teachers import RatingTeacher
from mmpref.data import atomic_write
from mmpref.losses import LossName
from mmpref.recipe import RecipeError, add_recipe_arguments, load_recipe, require_at_least
from mmpref.reward.system import RewardModelSystem

SelectOn = Literal["fused", "metric"]


@dataclass
class PeelingConfig:
    """One pipeline run (a recipe's fields).

    Args:
        task: a Meta-World v3 task whose object is moved to a goal (the progress metric reads slots 4:7 and 36:39).
        seed: seeds demonstrations, initialisation, rollouts and the environments' goals.
        demos: number of demonstrations (the paper: 50–200).
        noise_low: smallest per-episode action-noise standard deviation of the scripted expert.
        noise_high: largest one.
        max_steps: steps per episode (all episodes share it).
        squash: policy squashing, ``"clip"`` or ``"tanh"``.
        hidden: policy width.
        bc_epochs: behaviour-cloning epochs.
        pool: fixed-goal training environments for stage 2.
        rated: BC rollouts rated for the fused reward.
        rating_levels: rating scale 1..levels (edges at the quantiles of the rated returns).
        rating_noise: standard deviation of the rater's noise on the return.
        smoothness: jerk weight λ of the metric.
        log_floor: ε of the metric's log-distance form (:func:`~mmpref.control.peeling.finetune.progress_steps`; 0: linear
            progress 1 − d_T/d_0). It counts the last centimetres to the goal more, where the success radius is.
        reward_epochs: epochs of the fused reward.
        iterations: finetuning rounds (16: on push-v3 the fused reward's validation score still rose after 8).
        groups: start states per round.
        group_size: rollouts per start state.
        beta: DPO β.
        loss: the core loss of stage 2: pairwise (``bradley_terry`` ...: best-vs-worst pairs of each group) or
            listwise (``plackett_luce`` ...: each group's whole ranking).
        explore_temperature: σ multiplier of the finetuning rollouts (1: the policy's own samples; 0.5 measured better
            on push-v3, `docs/benchmarks/bench_peeling_variants_cpu.md`).
        lr: finetuning learning rate.
        epochs: passes per round.
        nll_weight: weight of the winners' NLL (RPO).
        demo_weight: weight of the offline term on the demonstrations ranked by the fused reward (0: off).
        residual_hidden: 0 finetunes the whole BC policy; > 0 freezes it and trains a residual MLP of this width on
            top (:class:`~mmpref.control.policies.ResidualPolicy`), starting exactly at BC.
        windows: rank and pair the rollouts of a group window by window (this many consecutive windows, each scored
            by its share of the fused reward; 1: whole rollouts; 5 measured better on push-v3).
        window_credit: ``"own"`` ranks a window by its own share of the fused reward, ``"to_go"`` by its share plus
            every later window's (measured better on push-v3: a reach pays off in the later windows).
        noise_correlation: ρ of the finetuning rollouts' AR(1) exploration noise (0: independent per step; 0.97,
            ~30 steps, measured better on push-v3).
        replay_rounds: each round's DPO objective also takes the ranked groups of this many previous rounds (0:
            the round's own groups only; :class:`~mmpref.control.peeling.finetune.FinetuneConfig`; 3 measured worse on
            push-v3, ``docs/benchmarks/bench_peeling_replay3_cpu.md``).
        lr_decay: the finetuning learning rate is multiplied by this after every round (1: constant;
            :class:`~mmpref.control.peeling.finetune.FinetuneConfig`).
        round_average: λ of the exponential average of the rounds' weights that is validated, chosen and returned
            instead of each round's own weights (0: off; :class:`~mmpref.control.peeling.finetune.RoundAverage`; 0.7 measured
            worse on push-v3, ``docs/benchmarks/bench_peeling_round_average_cpu.md``).
        censored: finetune with the censored clip likelihood (:func:`~mmpref.control.policies.censored_copy`:
            actions on the ±1 bounds scored by the Gaussian mass beyond them) for the policy and its reference;
            BC itself is trained as before. Ignored with ``squash`` = ``"tanh"`` (it never reaches ±1).
        validation: fixed-goal validation environments (goals differ from the training pool's and the
            evaluation's) on which each round's mean-action policy is scored (``select_on``; 0: none).
        select_best: keep the round (BC = round 0) that scores best there instead of the last one.
        select_on: what scores the validation rollouts: ``"fused"``, the fused reward (task metric + the learned
            rating part), or ``"metric"``, the task metric alone (final progress, :func:`~mmpref.control.peeling
            .metric_scores`; the rating part is learned from BC rollouts and may not rank a finetuned policy's).
        eval_episodes: held-out goals per evaluation, each a distinct start state (at most 50, the goals a Meta-World
            task draws from; :func:`evaluate_policy`).
        refit_rated: 0 fits the fused reward once, on rated BC rollouts; > 0 rates this many rollouts of every
            finetuning round with the same teacher and refits the reward on all ratings so far before the next
            round (:class:`~mmpref.control.peeling.finetune.RewardRefit`; labels: ``rated + iterations · refit_rated``).
        oracle: rank stage 2's rollouts (and choose the round) by the environment's true return instead of the
            fused reward: the upper bound of what a perfect reward model gives, for diagnosing whether the reward or
            the finetuning limits the gain (it reads the simulator's reward, which a human-rated task does not have).
        track_rounds: after every round (and before the first, BC) also roll out the mean-action policy on the
            held-out goals and on ``max(validation, 16)`` validation goals (the first ``validation`` of them are the
            ones the round is chosen on) and keep per goal its success, final progress and (validation) fused score,
            in ``results["rounds"]``. For diagnosis only (how good was each round; how would another rule for
            choosing the round have fared): nothing is chosen on it. Costs about one more rollout per held-out and
            validation goal per round.
        restarts: run stage 2 this many times from the same BC policy and fused reward, each with its own
            exploration (:func:`restart_seed`), and keep the run whose kept round scores best on the validation
            goals (:func:`best_restart`; needs ``validation`` >= 1). Costs ``restarts`` times stage 2; what it buys
            is a second chance where one run's few start states per round led it astray.
        first_restart: index of the first restart run (restart r explores with :func:`restart_seed` (seed, r)), so
            restarts can be split across runs or machines: a run with ``first_restart: 1`` adds restart 1 to an
            earlier run of restart 0, and :func:`best_restart` over their validation scores keeps what one run with
            ``restarts: 2`` would.
        restart_validation: goals the restarts are chosen on (0: the ``validation`` goals, the kept round's own
            score). With n > 0 each restart's kept policy is rolled out (mean action) on the first n fixed-goal
            validation environments (:func:`validation_pool`; they start with the ``validation`` ones), scored as
            the rounds are (``select_on``), and :func:`best_restart` compares those scores: 8 goals chose rounds
            well enough but left restarts whose scores differ by a few hundredths to which goals were drawn.
            Each restart's score is kept in ``results["restarts"]`` (``choice``), so restarts split across runs
            combine as before. Costs n rollouts per restart.
    """

    task: str = "push-v3"
    seed: int = 0
    demos: int = 50
    noise_low: float = 0.1
    noise_high: float = 0.6
    max_steps: int = 150
    squash: Squash = "clip"
    hidden: int = 256
    bc_epochs: int = 100
    pool: int = 16
    rated: int = 64
    rating_levels: int = 5
    rating_noise: float = 0.0
    smoothness: float = 0.0
    log_floor: float = 0.0
    reward_epochs: int = 30
    iterations: int = 16
    groups: int = 4
    group_size: int = 8
    beta: float = 0.1
    loss: LossName = "bradley_terry"
    explore_temperature: float = 0.5
    lr: float = 1e-4
    epochs: int = 4
    nll_weight: float = 1.0
    demo_weight: float = 0.0
    windows: int = 5
    residual_hidden: int = 0
    window_credit: WindowCredit = "to_go"
    noise_correlation: float = 0.97
    replay_rounds: int = 0
    lr_decay: float = 1.0
    round_average: float = 0.0
    censored: bool = True
    validation: int = 0
    select_best: bool = False
    select_on: SelectOn = "fused"
    eval_episodes: int = 30
    refit_rated: int = 0
    oracle: bool = False
    track_rounds: bool = False
    restarts: int = 1
    first_restart: int = 0
    restart_validation: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.noise_low <= self.noise_high:
            raise ValueError(f"need 0 <= noise_low <= noise_high, got {self.noise_low} and {self.noise_high}")
        counts = ("demos", "max_steps", "bc_epochs", "pool", "reward_epochs", "iterations", "eval_episodes")
        require_at_least(self, (*counts, "restarts"))
        if self.eval_episodes > 50:
            raise ValueError(
                f"eval_episodes must be <= 50 (a Meta-World task has 50 distinct goals), got {self.eval_episodes}"
            )
        if self.log_floor < 0:
            raise ValueError(f"log_floor must be >= 0 (0: linear progress), got {self.log_floor}")
        if self.refit_rated < 0:
            raise ValueError(f"refit_rated must be >= 0 (0: fit the fused reward once), got {self.refit_rated}")
        if self.refit_rated > self.groups * self.group_size:
            raise ValueError(
                f"refit_rated ({self.refit_rated}) cannot exceed a round's rollouts (groups × group_size = "
                f"{self.groups * self.group_size})"
            )
        if self.oracle and self.refit_rated > 0:
            raise ValueError("oracle ranks by the true return: there is no fused reward to refit; set refit_rated=0")
        if self.residual_hidden < 0:
            raise ValueError(f"residual_hidden must be >= 0 (0: finetune BC itself), got {self.residual_hidden}")
        if self.rated < 8:
            raise ValueError(f"rated must be >= 8 (the fused reward trains on lists of 8), got {self.rated}")
        if self.select_on not in ("fused", "metric"):
            raise ValueError(f"select_on must be 'fused' or 'metric', got {self.select_on!r}")
        if self.select_best and self.validation < 1:
            raise ValueError("select_best needs validation >= 1 environments to choose the round on")
        if self.first_restart < 0:
            raise ValueError(f"first_restart must be >= 0 (0: start with the plain run), got {self.first_restart}")
        if self.restarts > 1 and self.validation < 1:
            raise ValueError("restarts > 1 needs validation >= 1 environments to choose the restart on")
        if self.restart_validation < 0:
            raise ValueError(
                f"restart_validation must be >= 0 (0: choose the restart on the validation goals), "
                f"got {self.restart_validation}"
            )
        if self.restarts > 1 and self.refit_rated > 0:
            raise ValueError(
                "restarts > 1 compares the restarts' validation scores, which a refit scores with each restart's own "
                "reward: set refit_rated=0 or restarts=1"
            )
        self.finetune()  # checks the stage-2 fields (loss name, temperature)
        if self.groups > self.pool:
            raise ValueError(f"groups ({self.groups}) cannot exceed the pool of environments ({self.pool})")

    def finetune(self) -> FinetuneConfig:
        """The stage-2 settings: every field this config shares with :class:`FinetuneConfig`, by name."""
        return FinetuneConfig(
            **{f.name: getattr(self, f.name) for f in fields(FinetuneConfig) if hasattr(self, f.name)}
        )


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


def run_peeling(argv: Sequence[str]) -> int:
    """``mmpref peeling``: BC from noisy demonstrations, then preference finetuning (trajectory DPO).

    Writes ``<out>/demos.hdf5``, ``bc_policy.safetensors``, ``finetuned_policy.safetensors`` and ``summary.json``.
    """
    parser = argparse.ArgumentParser(prog="mmpref peeling", description=run_peeling.__doc__)
    add_recipe_arguments(parser, PeelingConfig)
    parser.add_argument("--out", default=None, help="output folder (default runs/peeling/<task>-seed<seed>)")
    args = parser.parse_args(argv)
    try:
        config = load_recipe(PeelingConfig, args.config, args.set)
    except RecipeError as err:
        print(f"mmpref peeling: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # many small ops: one thread is faster than several on a shared CPU
    out = Path(args.out or f"runs/peeling/{config.task}-seed{config.seed}")
    pool = training_pool(config)
    first = stage_one(config, pool, out / "demos.hdf5")
    results, timings = first.results, first.timings
    save_policy(first.policy, out / "bc_policy.safetensors")
    finetuned, policy = stage_two(config, first.policy, first.reward, pool, first.demonstrations, first.rated)
    results |= finetuned
    save_policy(policy, out / "finetuned_policy.safetensors")
    summary = {"config": asdict(config), "results": results, "timings": timings}
    with atomic_write(out / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    bc, ft = results["bc_mean"]["success"], results["ft_mean"]["success"]
    bc_sample, ft_sample = results["bc_sample"]["success"], results["ft_sample"]["success"]
    tempered = results.get("bc_tempered_sample")
    baseline = f" (BC sampled at {config.explore_temperature}·σ: {tempered['success']:.2f})" if tempered else ""
    print(
        f"success (mean action) BC {bc:.2f} -> finetuned {ft:.2f}; sampled {bc_sample:.2f} -> {ft_sample:.2f}"
        f"{baseline}; {out}"
    )
    return 0
