"""Benchmark: the regret vs the partial-return preference model on random delivery gridworlds (Knox et al.).

For each of ``--instances`` random gridworlds (random layout and reward weights), each dataset size and each
teacher (regret-generated or partial-return-generated labels, Bradley-Terry with inverse temperature ``--beta``),
it samples segment pairs (uniformly random start cell and actions, ``--length`` steps), labels them, and learns the
linear reward weights under both preference models. The learned reward's optimal policy is scored under the true
reward: normalised return q = (J(π̂) − J(uniform)) / (J(π*) − J(uniform)), "near-optimal" when q ≥ 0.9.

Reported per cell: the fraction of instances that are near-optimal with a 95 % Wilson interval, the mean q with a
95 % bootstrap interval, and the paired difference regret − partial return with a 95 % paired bootstrap interval.
Writes docs/benchmarks/bench_regret_gridworld.{json,md,png}; results are saved after every dataset size.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_regret.py --instances 100 --sizes 30 100 300 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mmpref.control.regret import TabularTeacher, fit_reward_weights, policy_quality, sample_segments
from mmpref.data.io import atomic_write
from mmpref_envs import DeliveryGrid

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
MODELS = ("regret", "partial_return")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def bootstrap(values: np.ndarray, rng: np.random.Generator, reps: int = 5000) -> tuple[float, float]:
    idx = rng.integers(len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def run_instance(seed: int, size: int, teacher: str, args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng([seed, size])
    grid = DeliveryGrid.random(np.random.default_rng(seed), height=args.height, width=args.width, gamma=args.gamma)
    mdp = grid.mdp()
    a = sample_segments(mdp, grid.start_states, size, args.length, rng)
    b = sample_segments(mdp, grid.start_states, size, args.length, rng)
    labels = TabularTeacher(teacher, beta=args.beta, seed=seed).label(mdp, grid.weights, a, b)
    out = {}
    for model in MODELS:
        w = fit_reward_weights(model, mdp, a, b, labels, steps=args.steps, lr=args.lr)
        out[model] = policy_quality(mdp, grid.weights, w, grid.start_states)
    return out


def summarise(quality: dict[str, np.ndarray], threshold: float, rng: np.random.Generator) -> dict[str, object]:
    row: dict[str, object] = {}
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


def write(results: dict[str, object], args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with atomic_write(OUT / f"{args.out}.json", "w") as f:
        json.dump(results, f, indent=1)
    lines = [
        f"Reproduce with `OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_regret.py --instances {args.instances} "
        f"--sizes {' '.join(map(str, args.sizes))} --teachers {' '.join(args.teachers)} --out {args.out}` "
        f"(one process, one torch thread; {results['wall_s']:.0f} s here).",
        "",
        "# Regret vs partial-return preference model on random delivery gridworlds",
        "",
        f"machine: {results['machine']}",
        "",
        f"{args.instances} random {args.height}x{args.width} instances (layout and reward weights random per "
        "instance), "
        f"γ = {args.gamma}, segments of {args.length} steps from a uniform start cell with uniformly random actions, "
        f"teacher β = {args.beta} (Bradley-Terry), linear reward learned by {args.steps} full-batch Adam steps "
        f"(lr {args.lr}). Near-optimal: the learned reward's optimal policy reaches normalised true return "
        f"≥ {args.threshold} (1 = optimal, 0 = uniformly random policy). Intervals: 95 % (Wilson for fractions, "
        "bootstrap for means and for the paired difference).",
        "",
        "| labels from | pairs | regret model: near-optimal | partial-return model: near-optimal | "
        "difference (paired) | regret model: mean q | partial-return model: mean q |",
        "|---|---|---|---|---|---|---|",
    ]
    for teacher, by_size in results["cells"].items():
        for size, row in by_size.items():
            r, p = row["regret"], row["partial_return"]
            lo, hi = row["difference_near_optimal_ci95"]
            lines.append(
                f"| {teacher} | {size} | {r['near_optimal']:.2f} [{r['near_optimal_ci95'][0]:.2f}, "
                f"{r['near_optimal_ci95'][1]:.2f}] | {p['near_optimal']:.2f} [{p['near_optimal_ci95'][0]:.2f}, "
                f"{p['near_optimal_ci95'][1]:.2f}] | {row['difference_near_optimal']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                f"{r['mean_quality']:.3f} [{r['mean_quality_ci95'][0]:.3f}, {r['mean_quality_ci95'][1]:.3f}] | "
                f"{p['mean_quality']:.3f} [{p['mean_quality_ci95'][0]:.3f}, {p['mean_quality_ci95'][1]:.3f}] |"
            )
    lines.append("")
    lines.append(f"![near-optimal fraction vs pairs]({args.out}.png)")
    with atomic_write(OUT / f"{args.out}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(results, args.out)


def plot(results: dict[str, object], name: str) -> None:
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
            ax.errorbar(
                sizes,
                y,
                yerr=[np.maximum(y - ci[:, 0], 0), np.maximum(ci[:, 1] - y, 0)],
                marker="o",
                capsize=3,
                color=colour,
                label=f"{model.replace('_', '-')} model",
            )
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("labelled segment pairs")
        ax.set_ylabel("fraction near-optimal (95 % CI)")
        ax.set_title(f"labels from a {teacher.replace('_', '-')} teacher")
        ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_write(OUT / f"{name}.png", "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 100, 300, 1000])
    parser.add_argument("--teachers", nargs="+", default=["regret", "partial_return"], choices=MODELS)
    parser.add_argument("--length", type=int, default=3)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.95)
    parser.add_argument("--height", type=int, default=6)
    parser.add_argument("--width", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--out", default="bench_regret_gridworld", help="file stem in docs/benchmarks")
    parser.add_argument("--resume", action="store_true", help="keep the cells already in the JSON, run the rest")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} vCPU (AMD EPYC), torch {torch.__version__}, "
        f"CPU only, shared with other jobs; {datetime.now(UTC).isoformat(timespec='seconds')}"
    )
    results: dict[str, object] = {"machine": machine, "args": vars(args), "cells": {}, "raw": {}}
    previous = OUT / f"{args.out}.json"
    if args.resume and previous.exists():
        results = json.loads(previous.read_text()) | {"args": vars(args)}
        start -= results.get("wall_s", 0.0)
    rng = np.random.default_rng(0)
    for teacher in args.teachers:
        results["cells"].setdefault(teacher, {})
        results["raw"].setdefault(teacher, {})
        for size in args.sizes:
            if str(size) in results["cells"][teacher]:
                continue
            runs = [run_instance(seed, size, teacher, args) for seed in range(args.instances)]
            quality = {m: np.array([r[m] for r in runs]) for m in MODELS}
            results["cells"][teacher][str(size)] = summarise(quality, args.threshold, rng)
            results["raw"][teacher][str(size)] = {m: quality[m].round(4).tolist() for m in MODELS}
            results["wall_s"] = time.perf_counter() - start
            write(results, args)
            print(teacher, size, json.dumps(results["cells"][teacher][str(size)]), flush=True)


if __name__ == "__main__":
    main()
