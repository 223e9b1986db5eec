"""Benchmark suite: PEBBLE-style PbRL and its parts (SURF, RUNE, RIME, QPA, listwise) vs SAC on the true reward.

For every task × seed it runs, with the same environment steps and evaluation schedule, each PbRL variant under each
label setting, SAC on the true reward and a random policy (two processes at a time by default, one torch thread
each). It records success curves, wall-clock, environment steps per CPU second and the CPU seconds spent in the
preference machinery, and writes after every finished run (JSON + markdown + success-curve PNG), so a cut-short
suite still reports what it finished.

Variants (``--variants``): ``pebble`` (no parts), ``surf``, ``rune``, ``rime``, ``qpa`` (with uniform sampling from
the policy-aligned episodes, as in the paper), ``listwise`` (K = ``--list-size`` rankings, K − 1 labels each).
Label settings (``--label-settings``): ``efficient`` (``--efficient-labels``, default 500, perfect teacher), ``full``
(``--max-labels``, perfect teacher), ``noisy`` (``--max-labels`` with B-Pref's mistake rate ``--noise-eps``, 0.2).

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python scripts/bench_pbrl.py --tasks button-press-v3 window-open-v3 \\
        --seeds 0 1 2 --steps 50000 --variants pebble surf rune rime qpa listwise \\
        --label-settings efficient full noisy --processes 16

(the PbRL defaults are the recipes' setting: rounds every 2,000 steps from step 1,000, 70 reward updates per round,
a state-only learned reward standardised over the buffer; ``--no-state-only-reward`` gives PEBBLE's r(o, a)).
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

VARIANTS: dict[str, dict[str, Any]] = {
    "pebble": {},
    "surf": {"parts": ["surf"]},
    "rune": {"parts": ["rune"]},
    "rime": {"parts": ["rime"]},
    "qpa": {"parts": ["qpa"], "query_method": "uniform"},
    "listwise": {"parts": ["listwise"]},
}
LABEL = {"pebble": "PEBBLE", "surf": "+SURF", "rune": "+RUNE", "rime": "+RIME", "qpa": "+QPA", "listwise": "listwise"}


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


def run_random(job: dict[str, Any]) -> dict[str, Any]:
    """A uniformly random policy, evaluated like the learners: the same goals, success at any step, whole episodes."""
    from mmpref.control.envs import goal_count, make_env
    from mmpref.control.pbrl.evaluation import EVAL_SEED_OFFSET, evaluate_on_goals, evaluation_goals, evaluation_steps

    c = job["config"]
    env = make_env(c["task"], seed=c["seed"] + EVAL_SEED_OFFSET)
    env.action_space.seed(c["seed"])
    goals = evaluation_goals(c["seed"], c["eval_episodes"], goal_count(env))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    history = []
    for step in evaluation_steps(c["total_steps"], c["eval_every"]):
        scores = evaluate_on_goals(env, lambda _obs: env.action_space.sample(), goals)
        history.append({"steps": step} | scores | {"labels": 0})
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return (
        job
        | {"history": history, "wall_s": wall, "cpu_s": cpu, "labels": 0, "steps_per_cpu_s": float("nan")}
        | {"cpu_by_part_s": {"evaluate": cpu, "feedback_round": 0.0, "relabel": 0.0}}
    )


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    if job["method"] == "random":
        return run_random(job)
    from mmpref.control.pbrl.loop import PbRLConfig, PbRLLoop
    from mmpref.reward.trainers import quiet_lightning

    quiet_lightning()
    config = PbRLConfig(**job["config"])
    loop = PbRLLoop(config, progress=False)
    # CPU seconds of this (single-threaded) process, by part: robust to other jobs sharing the machine, unlike
    # wall-clock; evaluation episodes are excluded from the steps/s of every method.
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
    result = job | {
        "history": history,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_by_part_s": spent,
        "steps_per_cpu_s": config.total_steps / max(cpu - spent["evaluate"], 1e-9),
        "steps_per_wall_s": config.total_steps / max(wall, 1e-9),
        "labels": loop.teacher.budget.labelled,
    }
    if "rime" in loop.parts:  # the denoising record of every reward update
        result["rime_log"] = loop.parts["rime"].log
    return result


def _name(r: dict[str, Any]) -> str:
    if r["method"] == "sac":
        return "SAC (true reward)"
    if r["method"] == "random":
        return "random policy"
    return f"{LABEL[r['variant']]}, {r['setting']}"


def _mean(values: list[float]) -> float:
    """Mean ignoring NaN (NaN when nothing is left, without numpy's empty-slice warning)."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def summarise(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (task, method name): final and last-3 success over seeds, ratio to SAC, labels, speed vs SAC."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        row = table.setdefault(
            (r["task"], _name(r)), {"final": [], "last3": [], "sps": [], "labels": [], "pref_cpu": []}
        )
        curve = [h["success_rate"] for h in r["history"]] or [0.0]
        row["final"].append(curve[-1])
        row["last3"].append(float(np.mean(curve[-3:])))
        row["sps"].append(r["steps_per_cpu_s"])
        row["labels"].append(r["labels"])
        row["pref_cpu"].append(
            r["cpu_by_part_s"]["feedback_round"] / max(r["cpu_s"] - r["cpu_by_part_s"]["evaluate"], 1e-9)
        )
    for (task, _), row in table.items():
        sac = table.get((task, "SAC (true reward)"))
        sac_final = np.mean(sac["final"]) if sac else float("nan")
        sac_last3 = np.mean(sac["last3"]) if sac else float("nan")
        row["ratio"] = np.mean(row["final"]) / sac_final if sac and sac_final > 0 else float("nan")
        row["ratio_last3"] = np.mean(row["last3"]) / sac_last3 if sac and sac_last3 > 0 else float("nan")
        row["speed_ratio"] = _mean(row["sps"]) / _mean(sac["sps"]) if sac else float("nan")
    return table


def retention(results: list[dict[str, Any]]) -> list[str]:
    """Noisy vs noise-free success (same variant, same budget) for every variant run under both settings."""
    lines = []
    for task in sorted({r["task"] for r in results}):
        for variant in VARIANTS:
            runs = {
                s: [r for r in results if r["task"] == task and r.get("variant") == variant and r.get("setting") == s]
                for s in ("full", "noisy")
            }
            if runs["full"] and runs["noisy"]:
                clean = np.mean([np.mean([h["success_rate"] for h in r["history"][-3:]]) for r in runs["full"]])
                noisy = np.mean([np.mean([h["success_rate"] for h in r["history"][-3:]]) for r in runs["noisy"]])
                kept = noisy / clean if clean > 0 else float("nan")
                lines.append(f"| {task} | {LABEL[variant]} | {clean:.2f} | {noisy:.2f} | {kept:.2f} |")
    return lines


def goal_lines(table: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The suite's goals, judged from ``summarise``'s table (nothing when no PbRL run is there).

    (a) per task, the best label-efficient configuration's mean final success against SAC's (goal: ≥ 80 %); the best
    is chosen on the same seeds it is scored on, so the ratio is optimistic. (b) is the noise table above. Speed:
    1 − (steps per CPU-s of the variant / SAC's), the cost of the preference machinery (goal: ≤ 15 %).
    """
    lines = []
    for task in sorted({task for task, _ in table}):
        sac = table.get((task, "SAC (true reward)"))
        efficient = {name: row for (t, name), row in table.items() if t == task and name.endswith(", efficient")}
        if sac is None or not efficient:
            continue
        name, best = max(efficient.items(), key=lambda item: np.mean(item[1]["final"]))
        ratio = best["ratio"]
        verdict = "met" if ratio >= 0.8 else ("missed" if not np.isnan(ratio) else "undefined (SAC at 0)")
        lines.append(
            f"| {task} | (a) label-efficient success | best of {len(efficient)}: {name}, mean final "
            f"{np.mean(best['final']):.2f} vs SAC {np.mean(sac['final']):.2f} over {len(best['final'])} seeds | "
            f"{ratio:.2f} of SAC | {verdict} (goal ≥ 0.80) |"
        )
        for (t, name), row in sorted(table.items()):
            if t == task and name not in ("SAC (true reward)", "random policy") and not np.isnan(row["speed_ratio"]):
                cost = 1 - row["speed_ratio"]
                lines.append(
                    f"| {task} | speed: {name} | {_mean(row['sps']):.1f} vs SAC {_mean(sac['sps']):.1f} steps/CPU-s | "
                    f"costs {cost:.1%} | {'met' if cost <= 0.15 else 'missed'} (goal ≤ 15 %) |"
                )
    if not lines:
        return []
    return [
        "",
        "Goals (the best label-efficient configuration is picked on the seeds it is scored on: optimistic; speed is "
        "per CPU second of single-threaded runs; runs that share the machine move it by several points):",
        "",
        "| task | goal | measured | figure | verdict |",
        "|---|---|---|---|---|",
        *lines,
    ]


def curve_lines(results: list[dict[str, Any]], key: str, intro: str, column: str) -> list[str]:
    """A table of each run's ``history[key]`` at every evaluation, after a paragraph ``intro`` (none: no runs)."""
    runs = [r for r in results if any(key in h for h in r["history"])]
    if not runs:
        return []
    lines = ["", intro, "", f"| task | seed | method | {column} at each evaluation |", "|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["task"], r["seed"], _name(r))):
        curve = " ".join(f"{h.get(key, float('nan')):.0f}" for h in r["history"])
        lines.append(f"| {r['task']} | {r['seed']} | {_name(r)} | {curve} |")
    return lines


def eval_return_lines(results: list[dict[str, Any]]) -> list[str]:
    """Per run, the mean true return of the evaluation episodes (whole 500-step episodes) at each evaluation."""
    intro = (
        "True return of the evaluation episodes (deterministic policy, whole episodes on the evaluation goals; mean "
        "over the goals) at each evaluation: finer than the success rate, which is 0 until a goal is reached:"
    )
    return curve_lines(results, "eval_return", intro, "evaluation return")


RIME_COUNTS = ("labelled", "trusted", "flipped", "dropped", "corrupted", "dropped_corrupted", "flipped_correct")


def rime_lines(results: list[dict[str, Any]]) -> list[str]:
    """RIME's selection per run: totals over its reward updates and the last update's threshold.

    Counts are those of each reward update's last selection, summed over updates (every update judges all labels so
    far, so a pair counts once per update); 'selections' counts every selection (one per epoch by default);
    'caught' is the share of the corrupted labels (the scripted teacher's ε mistakes) that were dropped or flipped
    back, 'flips right' the share of flip-backs that restored a corrupted label, 'dropped corrupt' the share of the
    dropped pairs that were corrupted (the rest were correct labels thrown away).
    """
    runs = [r for r in results if r.get("rime_log")]
    if not runs:
        return []
    lines = [
        "",
        "RIME's denoising per run, summed over its reward updates (the last selection of each, which judges every "
        "label so far; 'selections' counts them all, one per reward epoch by default): trusted, "
        "flipped back and dropped pairs; with the scripted teacher's record of its mistakes, the share of corrupted "
        "labels caught (dropped or flipped back), of flip-backs that were right and of dropped pairs that were "
        "corrupted; τ_lower and ρ of the last update:",
        "",
        "| task | seed | method | updates | selections | pairs judged | trusted | flipped | dropped | corrupted "
        "| caught | flips right | dropped corrupt | last τ_lower | last ρ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def share(part: float, whole: float) -> str:
        return f"{part / whole:.0%}" if whole > 0 else "–"

    for r in sorted(runs, key=lambda r: (r["task"], r["seed"], _name(r))):
        log = r["rime_log"]
        total = {k: sum(u.get(k, 0.0) for u in log) for k in RIME_COUNTS}
        known = all("corrupted" in u for u in log)
        selections = sum(u.get("selections", 1.0) for u in log)  # records before selections per epoch: one each
        caught = total.get("dropped_corrupted", 0.0) + total.get("flipped_correct", 0.0)
        truth = (
            [
                f"{total['corrupted']:.0f}",
                share(caught, total["corrupted"]),
                share(total["flipped_correct"], total["flipped"]),
                share(total["dropped_corrupted"], total["dropped"]),
            ]
            if known
            else ["–"] * 4
        )
        lines.append(
            f"| {r['task']} | {r['seed']} | {_name(r)} | {len(log)} | {selections:.0f} | {total['labelled']:.0f} | "
            f"{total['trusted']:.0f} | {total['flipped']:.0f} | {total['dropped']:.0f} | {' | '.join(truth)} | "
            f"{log[-1]['tau_lower']:.2f} | {log[-1]['rho']:.3f} |"
        )
    return lines


def write_report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    from mmpref.data.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    table = summarise(results)
    episodes = meta["settings"].get("eval_episodes", "?")
    lines = [
        "# PbRL suite: PEBBLE and its parts vs SAC on the true reward and a random policy",
        "",
        f"machine: {meta['machine']}",
        "",
        f"steps per run: {meta['steps']}; seeds {meta['seeds']}; label settings {meta['label_settings']}; "
        f"raw simulator steps/s: {meta['raw_steps_per_s']}",
        "",
        f"settings: {meta['settings']}",
        "",
        f"Success is that of the deterministic policy (any step of an episode) over {episodes} evaluation episodes, "
        "each on a different goal of the task's 50, the same goals for every method of a seed (Meta-World v3 resets "
        "to one start state per goal: repeated episodes on one goal would be copies); 'last 3' the mean of the last "
        "three evaluations. Steps/s are per CPU second of each single-threaded run (evaluation excluded); 'preference "
        "CPU' is the share of a run's (non-evaluation) CPU time spent in feedback rounds (queries, labels, reward "
        "updates, relabelling).",
        "",
        "| task | method, labels | final success per seed | mean last 3 | / SAC final | / SAC last 3 | labels used "
        "| steps/CPU-s | / SAC speed | preference CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, name), row in sorted(table.items()):
        lines.append(
            f"| {task} | {name} | {np.round(row['final'], 2).tolist()} | {np.mean(row['last3']):.2f} | "
            f"{row['ratio']:.2f} | {row['ratio_last3']:.2f} | {row['labels']} | {_mean(row['sps']):.1f} | "
            f"{row['speed_ratio']:.2f} | {np.mean(row['pref_cpu']):.0%} |"
        )
    lines += goal_lines(table)
    kept = retention(results)
    if kept:
        lines += [
            "",
            "Noise: mean of the last three evaluations with the perfect teacher vs with mistake rate "
            f"ε = {meta['noise_eps']}, same budget:",
            "",
            "| task | variant | noise-free | noisy | kept |",
            "|---|---|---|---|---|",
            *kept,
        ]
    lines += [
        "",
        "Per run:",
        "",
        "| task | seed | method | success curve | CPU s | feedback CPU s | evaluation CPU s | steps/CPU-s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["task"], r["seed"], _name(r))):
        curve = " ".join(f"{h['success_rate']:.2f}" for h in r["history"])
        lines.append(
            f"| {r['task']} | {r['seed']} | {_name(r)} | {curve} | {r['cpu_s']:.0f} | "
            f"{r['cpu_by_part_s']['feedback_round']:.0f} | {r['cpu_by_part_s']['evaluate']:.0f} | "
            f"{r['steps_per_cpu_s']:.1f} | {r['wall_s']:.0f} |"
        )
    lines += eval_return_lines(results) + rime_lines(results)
    intro = (
        "True return of the training episodes (mean of the last five finished ones, stochastic policy) at each "
        "evaluation: the training env's single goal, while success is measured on the evaluation goals, so this "
        "says whether a run learned its own instance of the task:"
    )
    lines += curve_lines(results, "train_true_return", intro, "training true return")
    with atomic_write(out / "bench_pbrl.json", "w") as handle:
        json.dump({"meta": meta, "results": results}, handle, indent=1)
    with atomic_write(out / "bench_pbrl.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    plot(results, out)


def plot(results: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmpref.data.io import atomic_write

    tasks = sorted({r["task"] for r in results})
    names = sorted({_name(r) for r in results})
    colours = dict(zip(names, plt.cm.tab20(np.linspace(0, 1, max(len(names), 2))), strict=False))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for name in names:
            runs = [r for r in results if r["task"] == task and _name(r) == name and r["history"]]
            if not runs:
                continue
            length = min(len(r["history"]) for r in runs)
            steps = [h["steps"] for h in runs[0]["history"][:length]]
            mean = np.mean([[h["success_rate"] for h in r["history"][:length]] for r in runs], axis=0)
            style = {"color": "black", "lw": 2.5} if name.startswith("SAC") else {"color": colours[name], "lw": 1.5}
            if name == "random policy":
                style = {"color": "grey", "lw": 1.5, "ls": "--"}
            ax.plot(steps, mean, marker="o", ms=3, label=f"{name} ({len(runs)} seeds)", **style)
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("success rate (mean over seeds)")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_write(out / "bench_pbrl.png", "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def feedback_steps(total_steps: int, start: int, every: int, unsupervised_steps: int = 0) -> list[int]:
    """The steps at which the loop holds a preference round (its rule, ``PbRLLoop._is_feedback_step``).

    Rounds fall at ``start`` (``every`` when 0) and every ``every`` steps after it, none before PEBBLE's unsupervised
    phase ends (the loop skips those), so a budget split over these rounds is spent in full. A round at
    ``total_steps`` itself (the loop holds one when it falls there) is not counted: its labels could no longer change
    the policy.
    """
    first = start or every
    return [s for s in range(first, total_steps, every) if s >= unsupervised_steps]


def build_jobs(args: argparse.Namespace, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of the suite: SAC and random per task × seed, then each variant under each label setting."""
    budgets = {
        "efficient": (args.efficient_labels, 0.0),
        "full": (args.max_labels, 0.0),
        "noisy": (args.max_labels, args.noise_eps),
    }
    rounds = len(feedback_steps(args.steps, args.feedback_start, args.feedback_every, args.unsupervised_steps))
    jobs = []
    for seed in args.seeds:
        for task in args.tasks:
            base = settings | {"task": task, "seed": seed}
            if "sac" in args.baselines:
                jobs.append({"method": "sac", "task": task, "seed": seed, "config": base | {"reward": "true"}})
            if "random" in args.baselines:
                jobs.append({"method": "random", "task": task, "seed": seed, "config": base})
            for setting in args.label_settings:
                labels, eps = budgets[setting]
                per_round = args.queries_per_round or int(np.ceil(labels / max(rounds, 1)))
                variants = args.noisy_variants if setting == "noisy" and args.noisy_variants else args.variants
                for variant in variants:
                    config = base | {"max_labels": labels, "teacher_eps": eps, "queries_per_round": per_round}
                    config |= VARIANTS[variant] | ({"list_size": args.list_size} if variant == "listwise" else {})
                    jobs.append(
                        {"method": "pbrl", "variant": variant, "setting": setting, "task": task, "seed": seed}
                        | {"config": config}
                    )
    return jobs


def done_and_left(path: Path, jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The results in ``path`` that answer one of ``jobs`` (same method, variant, setting and config), and the rest.

    A result whose config differs from every job (other steps, other label budget...) is not kept, so a report never
    mixes settings. No file: nothing done.
    """
    if not path.is_file():
        return [], jobs

    def key(run: dict[str, Any]) -> str:
        fields = {k: run.get(k) for k in ("method", "variant", "setting", "task", "seed", "config")}
        return json.dumps(fields, sort_keys=True, default=str)

    wanted = {key(job) for job in jobs}
    done = [r for r in json.loads(path.read_text())["results"] if key(r) in wanted]
    finished = {key(r) for r in done}
    return done, [job for job in jobs if key(job) not in finished]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["button-press-v3", "window-open-v3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--label-settings",
        nargs="*",
        default=["efficient", "noisy"],
        choices=["efficient", "full", "noisy"],
        help="none: only the baselines (e.g. to measure how many steps SAC needs on a task)",
    )
    parser.add_argument(
        "--noisy-variants", nargs="+", default=None, choices=list(VARIANTS), help="variants of the noisy setting"
    )
    parser.add_argument("--baselines", nargs="*", default=["sac", "random"], choices=["sac", "random"])
    parser.add_argument("--efficient-labels", type=int, default=500)
    parser.add_argument("--max-labels", type=int, default=2000)
    parser.add_argument("--noise-eps", type=float, default=0.2)
    parser.add_argument("--list-size", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_pbrl"))
    parser.add_argument("--feedback-start", type=int, default=1000)
    parser.add_argument("--feedback-every", type=int, default=2000)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument(
        "--unsupervised-steps", type=int, default=0, help="PEBBLE pre-training (RIME warm-starts from it)"
    )
    parser.add_argument("--reward-updates", type=int, default=70)
    parser.add_argument("--reward-batch-size", type=int, default=64)
    parser.add_argument("--reward-hidden", type=int, default=128)
    parser.add_argument("--reward-layers", type=int, default=2)
    parser.add_argument("--reward-scale", type=float, default=1.0)
    parser.add_argument("--reward-normalize", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--state-only-reward", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--queries-per-round", type=int, default=None, help="default: the budget over the rounds")
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in OUT_DIR/bench_pbrl.json whose settings match, run only the others (the suite "
        "is long: stop it, add seeds or tasks, go on)",
    )
    args = parser.parse_args(argv)
    settings = {
        "total_steps": args.steps,
        "learning_starts": args.learning_starts,
        "unsupervised_steps": args.unsupervised_steps,
        "feedback_start": args.feedback_start,
        "feedback_every": args.feedback_every,
        "segment_length": 50,
        "reward_updates": args.reward_updates,
        "reward_batch_size": args.reward_batch_size,
        "reward_hidden": args.reward_hidden,
        "reward_layers": args.reward_layers,
        "reward_scale": args.reward_scale,
        "reward_normalize": args.reward_normalize,
        "reward_use_actions": not args.state_only_reward,
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
    }
    jobs = build_jobs(args, settings)
    meta = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": mp.cpu_count(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "steps": args.steps,
        "seeds": args.seeds,
        "label_settings": {
            s: {"efficient": args.efficient_labels}.get(s, args.max_labels) for s in args.label_settings
        },
        "noise_eps": args.noise_eps,
        "raw_steps_per_s": {task: round(raw_step_rate(task)) for task in args.tasks},
        "settings": settings,
        "command": "scripts/bench_pbrl.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    results: list[dict[str, Any]] = []
    if args.resume:
        results, jobs = done_and_left(args.out_dir / "bench_pbrl.json", jobs)
        print(f"{len(results)} runs kept from {args.out_dir / 'bench_pbrl.json'}", flush=True)
    print(f"{len(jobs)} runs of {args.steps} steps", flush=True)
    with mp.get_context("spawn").Pool(args.processes) as pool:
        for result in pool.imap_unordered(run_one, jobs):
            results.append(result)
            print(
                f"{result['task']} seed {result['seed']} {_name(result)}: final success "
                f"{result['history'][-1]['success_rate']:.2f}, {result['steps_per_cpu_s']:.0f} steps/CPU-s, "
                f"{result['wall_s']:.0f} s wall",
                flush=True,
            )
            write_report(results, meta, args.out_dir)
    print((args.out_dir / "bench_pbrl.md").read_text())


if __name__ == "__main__":
    main()
