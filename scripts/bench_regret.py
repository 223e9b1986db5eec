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
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mmpref.control.regret.job import MODELS, RegretConfig, format_table, plot, run_cell, summarise
from mmpref.data.io import atomic_write

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def config_of(args: argparse.Namespace) -> RegretConfig:
    """The job's settings from the command line (instances seeded 0, 1, ..., as ``mmpref regret`` with seed 0)."""
    names = [f.name for f in fields(RegretConfig) if f.name != "seed"]
    return RegretConfig(**{name: getattr(args, name) for name in names})


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
        format_table(results),
        "",
        f"![near-optimal fraction vs pairs]({args.out}.png)",
    ]
    with atomic_write(OUT / f"{args.out}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(results, OUT / f"{args.out}.png")


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
    config = config_of(args)
    rng = np.random.default_rng(0)
    for teacher in args.teachers:
        results["cells"].setdefault(teacher, {})
        results["raw"].setdefault(teacher, {})
        for size in args.sizes:
            if str(size) in results["cells"][teacher]:
                continue
            quality = run_cell(config, size, teacher)
            results["cells"][teacher][str(size)] = summarise(quality, args.threshold, rng)
            results["raw"][teacher][str(size)] = {m: quality[m].round(4).tolist() for m in MODELS}
            results["wall_s"] = time.perf_counter() - start
            write(results, args)
            print(teacher, size, json.dumps(results["cells"][teacher][str(size)]), flush=True)


if __name__ == "__main__":
    main()
