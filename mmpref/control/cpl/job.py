"""``mmpref cpl``: Contrastive Preference Learning, offline, from the preference pairs of a robomimic HDF5 file.

The file is one written by :func:`mmpref.control.robomimic_io.write_robomimic` with segment pairs beside the episodes
(e.g. by ``mmpref pearl``, or your own labels). Without a ``dataset`` the job first builds the mixed-quality dataset of
``scripts/bench_cpl.py`` for ``task`` (:func:`build_mixed_dataset`). Then, as the benchmark's CPL arm: a Gaussian
policy is warmed up by behaviour cloning on every transition (``warmup_steps`` minibatches of 256), trained with
:func:`mmpref.control.cpl.algorithm.train_cpl` (score Σ α log π, conservative bias λ; ties dropped), saved as
safetensors, and, with ``eval_episodes`` > 0, evaluated on the Meta-World task: the mean-action policy for one episode
(the task instance is fixed by the seed) and the sampling policy over ``eval_episodes`` episodes, on the instance the
built dataset comes from; and the mean-action policy over ``eval_goals`` distinct goals of the task (one episode each,
drawn from the seed independently of the data's instance, which may be among them; the goals of
:func:`mmpref.control.pbrl.evaluation.evaluation_goals`, as the PbRL suite's): how far a policy learned from one
instance carries, which the single instance (0 or 1) cannot say.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmpref.control.policies import GaussianPolicy, save_policy
from mmpref.control.segments import Episode
from mmpref.data import SegmentPair, atomic_write
from mmpref.recipe import blame, out_option, require_at_least, run_job
from mmpref.reward.trainers import TrainerSettings

BIAS_OFFSET = np.array([0.5, -0.5, 0.5, 0.0])  # the "biased" expert's constant action offset (it fails the task)


@dataclass
class CPLJobConfig:
    """One CPL run (a recipe's fields).

    Args:
        dataset: robomimic HDF5 file with preference pairs; unset: build the benchmark's dataset into ``--out``.
        task: Meta-World task to build the dataset for and to evaluate on (default: the file's ``env_name``).
        seed: seeds the dataset, the policy's initialisation, the minibatches and the evaluation.
        episodes: episodes of the built dataset (a third each: noisy expert, biased expert, random actions).
        horizon: steps per episode, of the built dataset and of the evaluation rollouts.
        length: segment length of the built dataset's pairs.
        pairs: labelled segment pairs of the built dataset.
        teacher: labeller of the built dataset: ``"regret"`` (scripted expert's return-to-go as V) or
            ``"partial_return"``.
        value_horizon: steps of the expert rollouts that estimate V for the regret teacher.
        gamma: discount of the regret teacher.
        hidden: width of the policy's two hidden layers.
        warmup_steps: behaviour-cloning minibatches (of 256 transitions) before CPL; 0 skips the warm-up.
        warmup_lr: AdamW learning rate of the warm-up.
        steps: CPL optimiser steps.
        batch_size: pairs per CPL step.
        lr: CPL learning rate (paper: 1e-4).
        alpha: temperature α of the score Σ α log π (paper: 0.1).
        conservative_bias: λ multiplying the loser's score (paper: 0.5).
        bc_weight: weight of an extra behaviour-cloning term during CPL (0 = off).
        eval_episodes: sampling-policy evaluation episodes; 0 skips evaluation (then ``task`` is not needed).
        eval_goals: distinct goals (of the task's 50) the mean-action policy is also evaluated on, one episode each;
            0 skips them.
        trainer: Lightning settings of the CPL training (accelerator, devices, precision...).
    """

    dataset: str | None = None
    task: str | None = None
    seed: int = 0
    episodes: int = 30
    horizon: int = 150
    length: int = 25
    pairs: int = 600
    teacher: Literal["regret", "partial_return"] = "regret"
    value_horizon: int = 50
    gamma: float = 0.99
    hidden: int = 256
    warmup_steps: int = 1000
    warmup_lr: float = 1e-3
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    alpha: float = 0.1
    conservative_bias: float = 0.5
    bc_weight: float = 0.0
    eval_episodes: int = 10
    eval_goals: int = 10
    trainer: TrainerSettings = field(default_factory=TrainerSettings)

    def __post_init__(self) -> None:
        self.trainer = TrainerSettings.of(self.trainer)
        if self.dataset is None and self.task is None:
            raise ValueError(
                "set dataset=<file.hdf5> (a robomimic file with preference pairs) or task=<Meta-World task> to build "
                "the benchmark's mixed dataset"
            )
        positive = ("episodes", "horizon", "length", "pairs", "value_horizon", "hidden", "steps", "batch_size")
        require_at_least(self, positive)
        require_at_least(self, ("warmup_steps", "eval_episodes", "eval_goals", "bc_weight"), 0)
        if self.eval_goals > 50:
            raise ValueError(f"eval_goals must be <= 50 (a Meta-World task has 50 goals), got {self.eval_goals}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 < self.conservative_bias <= 1:
            raise ValueError(f"conservative_bias λ must lie in (0, 1], got {self.conservative_bias}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")


# --- data --------------------------------------------------------------------------------------------------------


def build_mixed_dataset(config: CPLJobConfig, path: Path) -> dict[str, Any]:
    """The benchmark's dataset for ``config.task``, written to ``path``: mixed-quality episodes and labelled pairs.

    Episodes cycle through three sources: the scripted expert with action noise σ = 0.3 ("good"), the same expert
    with a constant action offset ("biased", fails) and uniformly random actions. Non-overlapping segments of
    ``length`` steps are paired at random and labelled by the regret teacher (V = the expert's return-to-go from the
    restored simulator state) or by partial return. The "good" episodes are listed in ``mask/good``. Returns the
    success rate of each source and the numbers of pairs and ties written (``scripts/bench_cpl.py`` builds its
    datasets with this function, one per seed).
    """
    from mmpref.control.envs import ExpertPolicy, make_env
    from mmpref.control.regret.continuous import (
        ExpertValueOracle,
        SegmentRegretTeacher,
        rollout_with_values,
        segment_boundary_values,
    )
    from mmpref.control.robomimic_io import write_robomimic
    from mmpref.control.segments import random_pairs
    from mmpref.control.teachers import ScriptedTeacher

    task, seed = config.task, config.seed
    env = make_env(task, seed=seed)
    oracle = ExpertValueOracle(task, horizon=config.value_horizon, gamma=config.gamma)
    rng = np.random.default_rng(seed)
    good, biased = ExpertPolicy(task, noise=0.3, seed=seed), ExpertPolicy(task, noise=0.3, seed=seed + 1)
    sources = {
        "good": good,
        "biased": lambda obs: np.clip(biased(obs) + BIAS_OFFSET, -1, 1),
        "random": lambda obs: rng.uniform(-1, 1, 4),
    }
    names = [list(sources)[k % 3] for k in range(config.episodes)]
    episodes, values = [], []
    for k, name in enumerate(names):
        episode, v = rollout_with_values(
            env,
            sources[name],
            oracle,
            every=config.length,
            max_steps=config.horizon,
            seed=1000 * seed + k,
            source=name,
        )
        episodes.append(episode)
        values.append(v)
    segments, table = segment_boundary_values(episodes, values, config.length)
    pairs = random_pairs(segments, config.pairs, rng)
    if config.teacher == "regret":
        labelled = SegmentRegretTeacher(value=lambda s: table[s.id], gamma=config.gamma).label_pairs(pairs)
    else:
        labelled = ScriptedTeacher().label_pairs(pairs)
    good_ones = [i for i, n in enumerate(names) if n == "good"]
    write_robomimic(path, episodes, task, pairs=labelled, masks={"good": good_ones})
    success = {
        n: float(np.mean([e.succeeded for e, m in zip(episodes, names, strict=True) if m == n])) for n in sources
    }
    return {"success_by_source": success, "pairs": len(labelled), "ties": int(sum(p.label == 0.5 for p in labelled))}


def resolve_task(config: CPLJobConfig, path: Path) -> str | None:
    """The task to evaluate on: ``config.task`` or the file's ``env_name``; a clash or an unknown task raises."""
    from mmpref.control.envs import check_task
    from mmpref.control.robomimic_io import resolve_env_name

    task = resolve_env_name(path, config.task)
    if config.eval_episodes > 0:
        if task is None:
            raise ValueError(f"{path} records no env_name: set task=<Meta-World task>, or eval_episodes=0")
        check_task(task)
    return task


def load_dataset(path: Path) -> tuple[list[Episode], list[SegmentPair], dict[str, Any]]:
    """Episodes and preference pairs of a robomimic file, checked for CPL (one segment length, some non-ties)."""
    from mmpref.control.cpl.algorithm import oriented_pairs
    from mmpref.control.robomimic_io import read_preference_pairs, read_robomimic
    from mmpref.data import DataError

    episodes = read_robomimic(path)
    try:
        pairs = read_preference_pairs(path)
    except DataError as err:
        if "preferences" not in str(err):
            raise
        raise ValueError(
            f"{err}\nCPL needs labelled segment pairs: write them with mmpref.control.robomimic_io.write_robomimic("
            "..., pairs=...), take a file written by `mmpref pearl`, or leave dataset unset to build one"
        ) from None
    try:
        oriented_pairs(pairs)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    info = {
        "path": str(path),
        "episodes": len(episodes),
        "transitions": int(sum(len(e) for e in episodes)),
        "pairs": len(pairs),
        "ties": int(sum(p.label == 0.5 for p in pairs)),
        "segment_length": len(pairs[0].a) if pairs else 0,
        "teacher": pairs[0].teacher if pairs else "",
    }
    return episodes, pairs, info


# --- training and evaluation -------------------------------------------------------------------------------------


def warm_up(policy: GaussianPolicy, obs: np.ndarray, act: np.ndarray, steps: int, lr: float, seed: int) -> None:
    """Behaviour cloning for ``steps`` minibatches of 256 transitions drawn with replacement (AdamW)."""
    obs_t, act_t = torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(policy.parameters(), lr=lr)
    policy.train()
    for _ in range(steps):
        idx = torch.randint(len(obs_t), (256,), generator=generator)
        loss = -policy.log_prob(obs_t[idx], act_t[idx]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    policy.eval()


def pair_accuracy(policy: GaussianPolicy, pairs: Sequence[SegmentPair], alpha: float) -> float:
    """Fraction of non-tied pairs whose preferred segment the policy scores higher (Σ α log π; equal counts ½)."""
    from mmpref.control.cpl.algorithm import cpl_scores, oriented_pairs

    obs_w, act_w, obs_l, act_l = oriented_pairs(pairs).tensors
    with torch.no_grad():
        margin = cpl_scores(policy, obs_w, act_w, alpha) - cpl_scores(policy, obs_l, act_l, alpha)
    return float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean())


def evaluate(
    policy: GaussianPolicy, task: str, seed: int, horizon: int, episodes: int, goals: int = 0
) -> dict[str, float]:
    """Success on the seed's instance, and over ``goals`` distinct goals of the task.

    On the instance: the mean-action policy (1 episode) and the sampling policy (``episodes`` episodes). With
    ``goals`` > 0 also the mean-action policy's success and mean return over that many distinct goals
    (``goals_deterministic``, ``goals_return``; one episode of ``horizon`` steps each).
    """
    from mmpref.control.envs import make_env
    from mmpref.control.pbrl.evaluation import evaluate_on_goals, evaluation_goals
    from mmpref.control.segments import rollout

    env = make_env(task, seed=seed)
    deterministic = rollout(env, policy.numpy_policy(deterministic=True), max_steps=horizon, seed=0).succeeded
    sampled = [
        rollout(env, policy.numpy_policy(deterministic=False, seed=k), max_steps=horizon, seed=k).succeeded
        for k in range(episodes)
    ]
    result = {"deterministic": float(deterministic), "stochastic": float(np.mean(sampled)), "episodes": episodes}
    if goals > 0:
        over = evaluate_on_goals(env, policy.numpy_policy(deterministic=True), evaluation_goals(seed, goals), horizon)
        result |= {"goals": goals, "goals_deterministic": over["success_rate"], "goals_return": over["eval_return"]}
    env.close()
    return result


def train(
    config: CPLJobConfig, episodes: Sequence[Episode], pairs: Sequence[SegmentPair]
) -> tuple[GaussianPolicy, GaussianPolicy, dict[str, Any]]:
    """The BC warm-up, then CPL on a copy: returns (warm-up policy, CPL policy, training metrics)."""
    from mmpref.control.cpl.algorithm import train_cpl

    obs = np.concatenate([e.observations for e in episodes])
    act = np.concatenate([e.actions for e in episodes])
    torch.manual_seed(config.seed)
    warm = GaussianPolicy(obs_dim=obs.shape[1], act_dim=act.shape[1], hidden=config.hidden)
    warm.set_normalizer(obs)
    warm_up(warm, obs, act, config.warmup_steps, config.warmup_lr, config.seed)
    policy = copy.deepcopy(warm)
    logged = train_cpl(
        policy,
        pairs,
        steps=config.steps,
        batch_size=config.batch_size,
        seed=config.seed,
        lr=config.lr,
        alpha=config.alpha,
        conservative_bias=config.conservative_bias,
        bc_weight=config.bc_weight,
        trainer=config.trainer,
    )
    metrics = {
        "pair_accuracy_warmup": pair_accuracy(warm, pairs, config.alpha),
        "pair_accuracy": pair_accuracy(policy, pairs, config.alpha),
        # the benchmark's "CPL train pair accuracy": the last minibatch's, as Lightning logged it
        "train_accuracy_last_batch": logged.get("train/accuracy", float("nan")),
    }
    return warm, policy, metrics


# --- the job -----------------------------------------------------------------------------------------------------


def prepare(config: CPLJobConfig, out: Path) -> tuple[str | None, list[Episode], list[SegmentPair], dict[str, Any]]:
    """Build or locate the dataset, resolve the task, and load the pairs; bad input raises ``RecipeError``."""
    from mmpref.control.envs import check_task

    built: dict[str, Any] = {}
    path = Path(config.dataset) if config.dataset is not None else out / "dataset.hdf5"
    if config.dataset is None:
        with blame("task"):
            check_task(config.task)
        built = {"built": True, "success_by_source": build_mixed_dataset(config, path)["success_by_source"]}
    with blame("dataset"):
        episodes, pairs, info = load_dataset(path)
    with blame("task"):
        task = resolve_task(config, path)
    return task, episodes, pairs, info | built


def run_cpl(argv: Sequence[str]) -> int:
    """``mmpref cpl``: train a policy with CPL from a robomimic file's preference pairs; optionally evaluate it.

    Writes ``<out>/policy.safetensors`` and ``summary.json`` (and ``dataset.hdf5`` when it builds the data).
    """
    options = out_option("runs/cpl/<task or file>-seed<seed>")
    return run_job("mmpref cpl", CPLJobConfig, argv, _run, options, run_cpl.__doc__)


def _run(config: CPLJobConfig, args: Any) -> int:
    torch.set_num_threads(1)  # small MLP, small batches: one thread is fastest on a shared CPU
    name = config.task or Path(config.dataset or "data").stem
    out = Path(args.out or f"runs/cpl/{name}-seed{config.seed}")
    task, episodes, pairs, data = prepare(config, out)
    warm, policy, metrics = train(config, episodes, pairs)
    save_policy(policy, out / "policy.safetensors")
    summary: dict[str, Any] = {"config": asdict(config), "task": task, "data": data, "training": metrics}
    if config.eval_episodes > 0:
        run = (task, config.seed, config.horizon, config.eval_episodes, config.eval_goals)
        summary["success"], summary["success_warmup"] = evaluate(policy, *run), evaluate(warm, *run)
    with atomic_write(out / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    print(report(summary, out))
    return 0


def report(summary: dict[str, Any], out: Path) -> str:
    """The run in two lines: pair accuracy, success (when evaluated), the files written."""
    data, training = summary["data"], summary["training"]
    lines = [
        f"CPL on {data['pairs'] - data['ties']} labelled pairs ({data['ties']} ties dropped): pair accuracy "
        f"{training['pair_accuracy_warmup']:.2f} after BC warm-up -> {training['pair_accuracy']:.2f}"
    ]
    if "success" in summary:
        s, w = summary["success"], summary["success_warmup"]
        lines.append(
            f"success on {summary['task']}: mean action {s['deterministic']:.0f} (warm-up {w['deterministic']:.0f}), "
            f"sampled {s['stochastic']:.2f} over {s['episodes']} episodes (warm-up {w['stochastic']:.2f})"
        )
        if "goals" in s:
            lines.append(
                f"mean action over {s['goals']} distinct goals of the task: success {s['goals_deterministic']:.2f} "
                f"(warm-up {w['goals_deterministic']:.2f}), return {s['goals_return']:.0f} "
                f"(warm-up {w['goals_return']:.0f})"
            )
    written = [f"{out}/policy.safetensors", f"{out}/summary.json"]
    if data.get("built"):
        written.insert(0, f"{out}/dataset.hdf5")
    lines.append(f"written: {', '.join(written)}")
    return "\n".join(lines)
