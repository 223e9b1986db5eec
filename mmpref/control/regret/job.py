"""``mmpref regret``: the regret vs the partial-return preference model on random delivery gridworlds (Knox et al.).

For each of ``instances`` random gridworlds (layout and reward weights drawn from the instance's seed), each dataset
size and each teacher (regret- or partial-return-generated labels, Bradley-Terry with inverse temperature ``beta``),
segment pairs are sampled (uniform start cell, uniformly random actions, ``length`` steps) and labelled, and linear
reward weights are learned under both preference models (:func:`mmpref.control.regret.model.fit_reward_weights`). Each
learned reward's optimal policy is scored under the true reward: normalised return q = (J(π̂) − J(uniform)) /
(J(π*) − J(uniform)), "near-optimal" when q ≥ ``threshold``.

Per cell (teacher × size): the fraction of near-optimal instances with a 95 % Wilson interval, the mean q with a 95 %
bootstrap interval, and the paired difference regret − partial return with a 95 % paired bootstrap interval.
``scripts/bench_regret.py`` runs these same functions (:func:`run_cell`, :func:`summarise`, :func:`format_table`,
:func:`plot`; instances seeded from 0), so with the same settings both give the same numbers. Writes
``results.json``, ``results.md`` and ``near_optimal.png``; the JSON is rewritten after every cell.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmpref.control.regret.model import (
    PREFERENCE_MODELS,
    PreferenceModel,
    TabularTeacher,
    fit_reward_weights,
    policy_quality,
    sample_segments,
)
from mmpref.data import atomic_write
from mmpref.recipe import out_option, require_at_least, run_job

MODELS: tuple[str, ...] = ("regret", "partial_return")  # the learner's preference models, both always fitted


@dataclass
class RegretConfig:
    """One regret-vs-partial-return experiment (a recipe's fields).

    Args:
        instances: random gridworlds per cell; instance i is seeded ``seed + i``.
        sizes: labelled segment pairs per dataset (one cell per size).
        teachers: label generators, ``"regret"`` and/or ``"partial_return"``.
        seed: seed of the first instance (layout, weights, segments, labels).
        length: steps per segment.
        beta: the teacher's Bradley-Terry inverse temperature.
        gamma: discount of the gridworld MDPs.
        height: grid height.
        width: grid width.
        steps: full-batch Adam steps of reward learning.
        lr: Adam learning rate of reward learning.
        threshold: normalised return from which a learned reward counts as near-optimal.
    """

    instances: int = 20
    sizes: tuple[int, ...] = (30, 100)
    teachers: tuple[PreferenceModel, ...] = ("regret",)
    seed: int = 0
    length: int = 3
    beta: float = 1.0
    gamma: float = 0.95
    height: int = 6
    width: int = 6
    steps: int = 300
    lr: float = 0.3
    threshold: float = 0.9

    def __post_init__(self) -> None:
        self.sizes, self.teachers = tuple(self.sizes), tuple(self.teachers)
        require_at_least(self, ("instances", "length", "steps", "height", "width"))
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes must be a non-empty list of pair counts >= 1, got {list(self.sizes)}")
        if not self.teachers or set(self.teachers) - set(PREFERENCE_MODELS):
            raise ValueError(
                f"teachers must be a non-empty list of {', '.join(PREFERENCE_MODELS)}; got {list(self.teachers)}"
            )
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must lie in (0, 1) (the regret model needs exact V*), got {self.gamma}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold is a normalised return in (0, 1], got {self.threshold}")


# --- statistics --------------------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial fraction k/n (95 % for z = 1.96)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def bootstrap(values: np.ndarray, rng: np.random.Generator, reps: int = 5000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of ``values``."""
    idx = rng.integers(len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarise(quality: dict[str, np.ndarray], threshold: float, rng: np.random.Generator) -> dict[str, Any]:
    """One cell: near-optimal fraction and mean q per model with intervals, and the paired difference."""
    row: dict[str, Any] = {}
    for model in MODELS:
        q = quality[model]
        k = int((q >= threshold).sum())
        row[model] = {
            "near_optimal": k / len(q),
            "near_optimal_ci95": wilson(k, len(q)),
            "mean_quality": float(q.mean()),
            "mean_quality_ci95": bootstrap(q, rng),
        }
    diff = (quality["regret"] >= threshold).astype(float) - (quality["partial_return"] >= threshold)
    row["difference_near_optimal"] = float(diff.mean())
    row["difference_near_optimal_ci95"] = bootstrap(diff, rng)
    return row


# --- the experiment ----------------------------------------------------------------------------------------------


def run_instance(config: RegretConfig, seed: int, size: int, teacher: str) -> dict[str, float]:
    """Normalised true return q of the reward learned under each model, on instance ``seed`` with ``size`` pairs."""
    from mmpref_envs import DeliveryGrid

    rng = np.random.default_rng([seed, size])
    grid = DeliveryGrid.random(
        np.random.default_rng(seed), height=config.height, width=config.width, gamma=config.gamma
    )
    mdp = grid.mdp()
    a = sample_segments(mdp, grid.start_states, size, config.length, rng)
    b = sample_segments(mdp, grid.start_states, size, config.length, rng)
    labels = TabularTeacher(teacher, beta=config.beta, seed=seed).label(mdp, grid.weights, a, b)
    quality = {}
    for model in MODELS:
        w = fit_reward_weights(model, mdp, a, b, labels, steps=config.steps, lr=config.lr)
        quality[model] = policy_quality(mdp, grid.weights, w, grid.start_states)
    return quality


def run_cell(config: RegretConfig, size: int, teacher: str) -> dict[str, np.ndarray]:
    """Normalised return q per model over all instances of one cell, ``{model: [instances]}``."""
    seeds = range(config.seed, config.seed + config.instances)
    runs = [run_instance(config, seed, size, teacher) for seed in seeds]
    return {model: np.array([r[model] for r in runs]) for model in MODELS}


def run_experiment(config: RegretConfig, out: Path | None = None) -> dict[str, Any]:
    """Every cell, teacher by teacher and size by size; with ``out``, the outputs are rewritten after each cell."""
    start = time.perf_counter()
    results: dict[str, Any] = {"config": asdict(config), "cells": {}, "raw": {}}
    rng = np.random.default_rng(0)  # bootstrap draws, shared by the cells in order (as the benchmark script)
    for teacher in config.teachers:
        results["cells"][teacher], results["raw"][teacher] = {}, {}
        for size in config.sizes:
            quality = run_cell(config, size, teacher)
            results["cells"][teacher][str(size)] = summarise(quality, config.threshold, rng)
            results["raw"][teacher][str(size)] = {m: quality[m].round(4).tolist() for m in MODELS}
            results["wall_s"] = time.perf_counter() - start
            if out is not None:
                write_outputs(results, config, out)
            print(f"{teacher} teacher, {size} pairs: {format_cell(results['cells'][teacher][str(size)])}", flush=True)
    return results


# --- outputs -----------------------------------------------------------------------------------------------------


def format_cell(row: dict[str, Any]) -> str:
    """One line: near-optimal fraction of each model and the paired difference."""
    r, p = row["regret"]["near_optimal"], row["partial_return"]["near_optimal"]
    return f"near-optimal: regret model {r:.2f}, partial-return model {p:.2f} ({row['difference_near_optimal']:+.2f})"


def _interval(values: Sequence[float], digits: int, sign: bool = False) -> str:
    spec = f"{'+' if sign else ''}.{digits}f"
    return f"[{values[0]:{spec}}, {values[1]:{spec}}]"


def format_table(results: dict[str, Any]) -> str:
    """The results as a markdown table, one row per (teacher, size), both models side by side."""
    lines = [
        "| labels from | pairs | regret model: near-optimal | partial-return model: near-optimal | "
        "difference (paired) | regret model: mean q | partial-return model: mean q |",
        "|---|---|---|---|---|---|---|",
    ]
    for teacher, by_size in results["cells"].items():
        for size, row in by_size.items():
            r, p = row["regret"], row["partial_return"]
            lines.append(
                f"| {teacher} | {size} | {r['near_optimal']:.2f} {_interval(r['near_optimal_ci95'], 2)} "
                f"| {p['near_optimal']:.2f} {_interval(p['near_optimal_ci95'], 2)} "
                f"| {row['difference_near_optimal']:+.2f} {_interval(row['difference_near_optimal_ci95'], 2, True)} "
                f"| {r['mean_quality']:.3f} {_interval(r['mean_quality_ci95'], 3)} "
                f"| {p['mean_quality']:.3f} {_interval(p['mean_quality_ci95'], 3)} |"
            )
    return "\n".join(lines)


def describe(config: RegretConfig) -> str:
    """The setting in one paragraph, for the markdown report."""
    return (
        f"{config.instances} random {config.height}x{config.width} instances (seeds {config.seed}.."
        f"{config.seed + config.instances - 1}), γ = {config.gamma}, segments of {config.length} steps from a uniform "
        f"start cell with uniformly random actions, teacher β = {config.beta} (Bradley-Terry), linear reward learned "
        f"by {config.steps} full-batch Adam steps (lr {config.lr}). Near-optimal: the learned reward's optimal policy "
        f"reaches normalised true return ≥ {config.threshold} (1 = optimal, 0 = uniformly random policy). Intervals: "
        "95 % (Wilson for fractions, bootstrap for means and for the paired difference)."
    )


def write_outputs(results: dict[str, Any], config: RegretConfig, out: Path) -> None:
    """``results.json``, ``results.md`` (setting + table) and ``near_optimal.png`` in ``out``."""
    with atomic_write(out / "results.json", "w") as handle:
        json.dump(results, handle, indent=1)
    text = [
        "# Regret vs partial-return preference model on random delivery gridworlds",
        "",
        describe(config),
        "",
        format_table(results),
        "",
        "![near-optimal fraction vs pairs](near_optimal.png)",
        "",
    ]
    with atomic_write(out / "results.md", "w") as handle:
        handle.write("\n".join(text))
    plot(results, out / "near_optimal.png")


def plot(results: dict[str, Any], path: Path) -> None:
    """Near-optimal fraction (95 % CI) against the number of labelled pairs, one panel per teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = list(results["cells"])
    fig, axes = plt.subplots(1, len(teachers), figsize=(5 * len(teachers), 3.6), squeeze=False)
    for ax, teacher in zip(axes[0], teachers, strict=True):
        by_size = results["cells"][teacher]
        sizes = [int(s) for s in by_size]
        for model, colour in zip(MODELS, ("tab:blue", "tab:orange"), strict=True):
            y = np.array([by_size[str(s)][model]["near_optimal"] for s in sizes])
            ci = np.array([by_size[str(s)][model]["near_optimal_ci95"] for s in sizes])
            error = [np.maximum(y - ci[:, 0], 0), np.maximum(ci[:, 1] - y, 0)]
            label = f"{model.replace('_', '-')} model"
            ax.errorbar(sizes, y, yerr=error, marker="o", capsize=3, color=colour, label=label)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("labelled segment pairs")
        ax.set_ylabel("fraction near-optimal (95 % CI)")
        ax.set_title(f"labels from a {teacher.replace('_', '-')} teacher")
        ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def run_regret(argv: Sequence[str]) -> int:
    """``mmpref regret``: learn gridworld rewards under the regret and the partial-return preference models.

    Writes ``<out>/results.json``, ``results.md`` and ``near_optimal.png``, and prints the table.
    """
    return run_job(
        "mmpref regret",
        RegretConfig,
        argv,
        _run,
        out_option("runs/regret/gridworld-seed<seed>"),
        run_regret.__doc__,
    )


def _run(config: RegretConfig, args: Any) -> int:
    import torch

    torch.set_num_threads(1)  # tiny full-batch problems: one thread is fastest on a shared CPU
    out = Path(args.out or f"runs/regret/gridworld-seed{config.seed}")
    results = run_experiment(config, out)
    print(f"\n{format_table(results)}\n\nwritten: {out}/results.json, {out}/results.md, {out}/near_optimal.png")
    return 0
