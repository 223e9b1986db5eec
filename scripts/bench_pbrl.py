"""Benchmark: PEBBLE-style PbRL with scripted labels vs SAC on the true reward, same env steps, same script.

For every (task, seed) it runs both methods (two processes at a time, one torch thread each), records the success
curve, the wall-clock and the environment steps/s of each, and the raw simulator step rate as the ceiling. Results
are written after every finished run (JSON + markdown + a success-curve PNG), so a cut-short benchmark still
reports what it finished.

    .venv/bin/python scripts/bench_pbrl.py --tasks drawer-close-v3 reach-v3 --seeds 0 1 2 --steps 20000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def raw_step_rate(task: str, steps: int = 3000) -> float:
    from mmpref.control.envs import make_env

    env = make_env(task, seed=0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from mmpref.control.pbrl import PbRLConfig, PbRLLoop

    config = PbRLConfig(
        task=job["task"],
        seed=job["seed"],
        total_steps=job["steps"],
        reward=job["reward"],
        learning_starts=1000,
        feedback_every=job["feedback_every"],
        queries_per_round=job["queries_per_round"],
        max_labels=job["max_labels"],
        segment_length=50,
        reward_epochs=job["reward_epochs"],
        eval_every=job["eval_every"],
        eval_episodes=5,
    )
    loop = PbRLLoop(config, progress=False)
    start = time.perf_counter()
    history = loop.run()
    wall = time.perf_counter() - start
    eval_time = 0.0  # evaluation episodes are inside the wall-clock; report them apart for the steps/s ratio
    t0 = time.perf_counter()
    final = loop.evaluate()
    eval_time = (time.perf_counter() - t0) * len(history)
    return {
        **job,
        "history": history,
        "wall_s": wall,
        "final_success": final,
        "steps_per_s": job["steps"] / max(wall - eval_time, 1e-9),
        "labels": len(loop.labelled),
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for r in results:
        row = table.setdefault(r["task"], {"true": [], "learned": [], "sps_true": [], "sps_learned": [], "labels": []})
        final = r["history"][-1]["success_rate"] if r["history"] else 0.0
        row[r["reward"]].append(final)
        row[f"sps_{r['reward']}"].append(r["steps_per_s"])
        if r["reward"] == "learned":
            row["labels"].append(r["labels"])
    for row in table.values():
        sac, pbrl = (
            np.mean(row["true"]) if row["true"] else float("nan"),
            np.mean(row["learned"]) if row["learned"] else float("nan"),
        )
        row["ratio"] = pbrl / sac if sac and sac > 0 else float("nan")
        row["speed_ratio"] = (
            np.mean(row["sps_learned"]) / np.mean(row["sps_true"])
            if row["sps_true"] and row["sps_learned"]
            else float("nan")
        )
    return table


def write_report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    from mmpref.data.io import atomic_write

    table = summarise(results)
    lines = [
        "# PbRL (scripted labels) vs SAC on the true reward",
        "",
        f"machine: {meta['machine']}",
        "",
        f"steps per run: {meta['steps']}; label budget {meta['max_labels']}; seeds {meta['seeds']}; "
        f"raw simulator steps/s: {meta['raw_steps_per_s']}",
        "",
        "| task | SAC (true reward) final success | PbRL final success | PbRL / SAC | labels used | "
        "PbRL steps/s / SAC steps/s |",
        "|---|---|---|---|---|---|",
    ]
    for task, row in table.items():
        lines.append(
            f"| {task} | {np.round(row['true'], 2).tolist()} | {np.round(row['learned'], 2).tolist()} | "
            f"{row['ratio']:.2f} | {row['labels']} | {row['speed_ratio']:.2f} |"
        )
    with atomic_write(out / "bench_pbrl.json", "w") as handle:
        json.dump({"meta": meta, "results": results}, handle, indent=1)
    with atomic_write(out / "bench_pbrl.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for reward, colour in (("true", "black"), ("learned", "tab:blue")):
            for r in (r for r in results if r["task"] == task and r["reward"] == reward):
                steps = [h["steps"] for h in r["history"]]
                ax.plot(
                    steps,
                    [h["success_rate"] for h in r["history"]],
                    color=colour,
                    alpha=0.7,
                    label=f"{'SAC true reward' if reward == 'true' else 'PbRL'} seed {r['seed']}",
                )
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(out / "bench_pbrl.png", "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["drawer-close-v3", "reach-v3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--max-labels", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_pbrl"))
    args = parser.parse_args(argv)
    rounds = max(1, (args.steps - 1000) // 2000)
    jobs = [
        {
            "task": task,
            "seed": seed,
            "reward": reward,
            "steps": args.steps,
            "feedback_every": 2000,
            "queries_per_round": int(np.ceil(args.max_labels / rounds)),
            "max_labels": args.max_labels,
            "reward_epochs": 10,
            "eval_every": 2500,
        }
        for task in args.tasks
        for seed in args.seeds
        for reward in ("learned", "true")
    ]
    meta = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": mp.cpu_count(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "steps": args.steps,
        "max_labels": args.max_labels,
        "seeds": args.seeds,
        "raw_steps_per_s": {task: round(raw_step_rate(task)) for task in args.tasks},
    }
    results: list[dict[str, Any]] = []
    with mp.get_context("spawn").Pool(args.processes) as pool:
        for result in pool.imap_unordered(run_one, jobs):
            results.append(result)
            print(
                f"{result['task']} {result['reward']} seed {result['seed']}: final success "
                f"{result['history'][-1]['success_rate']:.2f}, {result['steps_per_s']:.0f} steps/s, "
                f"{result['wall_s']:.0f} s",
                flush=True,
            )
            write_report(results, meta, args.out_dir)
    print((args.out_dir / "bench_pbrl.md").read_text())


if __name__ == "__main__":
    main()
