"""Benchmark: PEBBLE-style PbRL with scripted labels vs SAC on the true reward, same env steps, same script.

For every (task, seed) it runs both methods (two processes at a time, one torch thread each), records the success
curve, the wall-clock and the environment steps/s of each, and the raw simulator step rate as the ceiling. Results
are written after every finished run (JSON + markdown + a success-curve PNG), so a cut-short benchmark still
reports what it finished.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python scripts/bench_pbrl.py --tasks drawer-close-v3 handle-press-v3 \
        --seeds 0 1 2 --steps 20000

(defaults: the recipes' setting: a round every 2,000 steps from step 1,000, 70 reward updates per round, a
state-only learned reward standardised over the buffer; ``--no-state-only-reward`` gives PEBBLE's r(o, a))
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
    from mmpref.control.pbrl.loop import PbRLConfig, PbRLLoop
    from mmpref.reward.trainers import quiet_lightning

    quiet_lightning()
    config = PbRLConfig(**job["config"])
    loop = PbRLLoop(config, progress=False)
    # CPU seconds of this (single-threaded) process, by part: robust to other jobs sharing the machine, unlike
    # wall-clock; evaluation episodes are excluded from the steps/s of both methods.
    spent = {"evaluate": 0.0, "feedback_round": 0.0, "relabel": 0.0}

    def timed(name: str):
        original = getattr(loop, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - start

        return wrapper

    for name in spent:
        setattr(loop, name, timed(name))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    history = loop.run()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    steps = config.total_steps
    return {
        "task": config.task,
        "seed": config.seed,
        "reward": config.reward,
        "config": job["config"],
        "history": history,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_by_part_s": spent,
        "steps_per_cpu_s": steps / max(cpu - spent["evaluate"], 1e-9),
        "steps_per_wall_s": steps / max(wall, 1e-9),
        "labels": len(loop.labelled),
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for r in results:
        row = table.setdefault(
            r["task"],
            {"true": [], "learned": [], "last3_true": [], "last3_learned": [], "sps_true": [], "sps_learned": []}
            | {"labels": []},
        )
        curve = [h["success_rate"] for h in r["history"]] or [0.0]
        row[r["reward"]].append(curve[-1])
        row[f"last3_{r['reward']}"].append(float(np.mean(curve[-3:])))
        row[f"sps_{r['reward']}"].append(r["steps_per_cpu_s"])
        if r["reward"] == "learned":
            row["labels"].append(r["labels"])
    for row in table.values():
        sac, pbrl = (
            np.mean(row["true"]) if row["true"] else float("nan"),
            np.mean(row["learned"]) if row["learned"] else float("nan"),
        )
        row["ratio"] = pbrl / sac if sac and sac > 0 else float("nan")
        sac3, pbrl3 = (np.mean(row[k]) if row[k] else float("nan") for k in ("last3_true", "last3_learned"))
        row["ratio_last3"] = pbrl3 / sac3 if sac3 and sac3 > 0 else float("nan")
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
        f"settings: {meta['settings']}",
        "",
        "Steps/s are per CPU second of each single-threaded run (evaluation episodes excluded), so other jobs on the "
        "machine do not skew the ratio; wall-clock per run is in the JSON.",
        "",
        "| task | SAC (true reward) final success | PbRL final success | PbRL / SAC | PbRL / SAC, last 3 evaluations "
        "| labels used | SAC steps/CPU-s | PbRL steps/CPU-s | PbRL / SAC speed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, row in table.items():
        lines.append(
            f"| {task} | {np.round(row['true'], 2).tolist()} | {np.round(row['learned'], 2).tolist()} | "
            f"{row['ratio']:.2f} | {row['ratio_last3']:.2f} | {row['labels']} | "
            f"{np.mean(row['sps_true'] or [np.nan]):.1f} | "
            f"{np.mean(row['sps_learned'] or [np.nan]):.1f} | {row['speed_ratio']:.2f} |"
        )
    lines += [
        "",
        "Per run (success rate of the deterministic policy at each evaluation; 'last 3' is the mean of the last three "
        "evaluations, less noisy than the final one; CPU seconds by part; reward learning = query selection + reward "
        "updates + relabelling):",
        "",
        "| task | seed | method | final | last 3 | success curve | CPU s | reward learning CPU s | evaluation CPU s "
        "| steps/CPU-s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["task"], r["seed"], r["reward"])):
        curve = [h["success_rate"] for h in r["history"]]
        method = "PbRL" if r["reward"] == "learned" else "SAC true reward"
        lines.append(
            f"| {r['task']} | {r['seed']} | {method} | {curve[-1]:.1f} | {np.mean(curve[-3:]):.2f} | "
            f"{' '.join(f'{c:.1f}' for c in curve)} | {r['cpu_s']:.0f} | {r['cpu_by_part_s']['feedback_round']:.0f} | "
            f"{r['cpu_by_part_s']['evaluate']:.0f} | {r['steps_per_cpu_s']:.1f} | {r['wall_s']:.0f} |"
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
            runs = [r for r in results if r["task"] == task and r["reward"] == reward and r["history"]]
            name = "SAC true reward" if reward == "true" else "PbRL"
            for k, r in enumerate(runs):  # each seed thin and offset a little, so overlapping 0/1 curves stay visible
                steps = np.array([h["steps"] for h in r["history"]])
                offset = (k - 1) * 0.015 + (0.005 if reward == "learned" else -0.005)
                curve = np.array([h["success_rate"] for h in r["history"]]) + offset
                ax.plot(steps, curve, color=colour, alpha=0.3, lw=1)
            if runs:
                length = min(len(r["history"]) for r in runs)
                steps = [h["steps"] for h in runs[0]["history"][:length]]
                mean = np.mean([[h["success_rate"] for h in r["history"][:length]] for r in runs], axis=0)
                ax.plot(steps, mean, color=colour, lw=2.5, marker="o", label=f"{name}, mean of {len(runs)} seeds")
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
    parser.add_argument("--tasks", nargs="+", default=["drawer-close-v3", "handle-press-v3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--max-labels", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_pbrl"))
    parser.add_argument("--feedback-start", type=int, default=1000)
    parser.add_argument("--feedback-every", type=int, default=2000)
    parser.add_argument("--reward-updates", type=int, default=70)
    parser.add_argument("--reward-batch-size", type=int, default=64)
    parser.add_argument("--reward-hidden", type=int, default=128)
    parser.add_argument("--reward-layers", type=int, default=2)
    parser.add_argument("--reward-scale", type=float, default=1.0)
    parser.add_argument("--reward-normalize", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--reward-pessimism", type=float, default=0.0)
    parser.add_argument("--state-only-reward", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--queries-per-round", type=int, default=None, help="default: the budget over the rounds")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["learned", "true"], choices=["learned", "true"])
    args = parser.parse_args(argv)
    rounds = len(range(args.feedback_start or args.feedback_every, args.steps, args.feedback_every))
    settings = {
        "total_steps": args.steps,
        "learning_starts": 1000,
        "feedback_start": args.feedback_start,
        "feedback_every": args.feedback_every,
        "queries_per_round": args.queries_per_round or int(np.ceil(args.max_labels / max(rounds, 1))),
        "max_labels": args.max_labels,
        "segment_length": 50,
        "reward_updates": args.reward_updates,
        "reward_batch_size": args.reward_batch_size,
        "reward_hidden": args.reward_hidden,
        "reward_layers": args.reward_layers,
        "reward_scale": args.reward_scale,
        "reward_normalize": args.reward_normalize,
        "reward_pessimism": args.reward_pessimism,
        "reward_use_actions": not args.state_only_reward,
        "eval_every": 2500,
        "eval_episodes": args.eval_episodes,
    }
    jobs = [
        {"config": {**settings, "task": task, "seed": seed, "reward": reward}}
        for seed in args.seeds
        for task in args.tasks
        for reward in args.methods
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
        "settings": settings,
    }
    results: list[dict[str, Any]] = []
    with mp.get_context("spawn").Pool(args.processes) as pool:
        for result in pool.imap_unordered(run_one, jobs):
            results.append(result)
            print(
                f"{result['task']} {result['reward']} seed {result['seed']}: final success "
                f"{result['history'][-1]['success_rate']:.2f}, {result['steps_per_cpu_s']:.0f} steps/CPU-s, "
                f"{result['wall_s']:.0f} s wall",
                flush=True,
            )
            write_report(results, meta, args.out_dir)
    print((args.out_dir / "bench_pbrl.md").read_text())


if __name__ == "__main__":
    main()
