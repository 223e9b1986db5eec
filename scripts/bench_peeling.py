"""Benchmark: peeling-style two-stage finetuning, BC vs BC + preference finetuning (trajectory DPO), per seed.

Per seed: (1) scripted-expert demonstrations with Gaussian action noise drawn per episode from [noise_low,
noise_high], written to and read back from a robomimic HDF5 file; (2) behaviour cloning; (3) stochastic BC rollouts
from fixed-goal training environments, rated 1-5 by a RatingTeacher on their true return (trajectory level), and a
fused reward (object-to-goal progress per step + a learned step reward) trained on those ratings; (4) online
trajectory DPO against the frozen BC policy (16 rounds; rollouts at half σ with AR(1) noise, ρ 0.97, ranked window by
window on the fused reward to go; censored clip likelihood); (5) BC and the finetuned policy evaluated on the same
held-out goals, sampling (the policy as trained) and with the mean action: success rate, final progress 1 − d_T/d_0,
jerk.
Results are written after every seed (JSON + markdown), so a cut-short run still reports what it finished.
With --track-rounds every round's mean-action policy is also evaluated on the held-out goals (diagnosis only) and the
report adds what each rule for choosing the round would have kept.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_peeling.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import platform
import tempfile
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def run_seed(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from mmpref.control.peeling.config import PeelingConfig
    from mmpref.control.peeling.evaluation import held_out_results, training_pool
    from mmpref.control.peeling.fused_reward import FusedTrajectoryScorer
    from mmpref.control.peeling.pipeline import collect_demonstrations, rate_bc_rollouts, stage_one, stage_two
    from mmpref.control.policies import load_policy, save_policy
    from mmpref.reward.system import RewardModelSystem

    names = {f.name for f in fields(PeelingConfig)}
    config = PeelingConfig(**{k: v for k, v in job.items() if k in names})
    pool = training_pool(config)
    stage1_keys = ("task", "demos", "noise_low", "noise_high", "max_steps", "squash", "bc_epochs", "pool", "rated")
    stage1_keys += ("rating_noise", "smoothness", "reward_epochs", "eval_episodes")
    key = "_".join(f"{job[k]}" for k in stage1_keys)
    if job.get("log_floor", 0.0) > 0:  # the fused reward is fit on the log-distance metric: a stage 1 of its own
        key += f"_log{job['log_floor']}"
    key += f"_seed{config.seed}"
    cache = Path(job["cache_dir"]) / key if job.get("cache_dir") else None
    if cache is not None and (cache / "results.json").is_file():  # stage 1 done before with the same settings
        policy = load_policy(cache / "bc.safetensors")
        reward = RewardModelSystem(FusedTrajectoryScorer(39, 4))
        reward.load_state_dict(torch.load(cache / "reward.pt"))
        reward.eval()
        results = json.loads((cache / "results.json").read_text())
        timings = results.pop("timings")
        if "draws" not in results["bc_mean"]:  # cached before each held-out goal counted once: evaluate BC again
            results |= held_out_results(policy, config, "bc")
        demos = []
        if config.demo_weight > 0:  # deterministic in the seed: the same demonstrations BC was trained on
            with tempfile.TemporaryDirectory() as tmp:
                demos = collect_demonstrations(config, Path(tmp) / "demos.hdf5")
        # the rated set is deterministic too: rolled out again from a fresh pool, as stage 1 did
        rated = None
        if config.refit_rated > 0:
            act = policy.numpy_policy(deterministic=False, seed=config.seed)
            rated = rate_bc_rollouts(config, act, training_pool(config))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            first = stage_one(config, pool, Path(tmp) / "demos.hdf5")
        policy, reward, results, timings = first.policy, first.reward, first.results, first.timings
        demos, rated = first.demonstrations, first.rated
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            save_policy(policy, cache / "bc.safetensors")
            torch.save(reward.state_dict(), cache / "reward.pt")
            (cache / "results.json").write_text(json.dumps({**results, "timings": timings}))
    finetuned, policy = stage_two(config, policy, reward, pool, demos, rated)
    results |= finetuned
    timings["finetune_s"] = results.pop("finetune_s")
    if job.get("save_dir"):
        save_policy(policy, Path(job["save_dir"]) / f"peeling_{config.task}_seed{config.seed}.safetensors")
    results["timings"] = timings
    return results


def difference_interval(before: float, after: float, n: int) -> float:
    """Half-width of the 95 % Wald interval of a difference of two success rates over ``n`` goals each.

    Computed as if the two samples were independent; BC and the finetuned policy meet the same goals, which
    correlates them positively, so the true interval is narrower: this one is conservative.
    """
    return 1.96 * float(np.sqrt((before * (1 - before) + after * (1 - after)) / max(n, 1)))


def paired_interval(before: list[list[int]], after: list[list[int]]) -> float:
    """Half-width of the 95 % interval of the mean per-goal success change, pairing each goal's two outcomes.

    ``before``/``after``: per seed, 0/1 per goal in the same goal order (``goal_success`` of one evaluation).
    """
    diff = np.concatenate([np.subtract(a, b) for a, b in zip(after, before, strict=True)]).astype(float)
    return 1.96 * float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def round_choices(record: dict[str, Any], last: int, used: int) -> dict[str, int]:
    """The round each rule for choosing it keeps among rounds 0..``last`` of a ``--track-rounds`` record.

    ``used``: how many of the tracked validation goals the run itself chose on (its ``--validation``); the first rule
    reproduces that choice (left out with ``used`` = 0: the run chose nothing). Ties go to the earlier round, as in
    the run. The last entry is not a rule: it looks at the held-out goals, and says how much any rule could gain.
    """
    rounds = slice(0, last + 1)
    fused = np.array([v["fused"] for v in record["validation"][rounds]])
    progress = np.array([v["progress"] for v in record["validation"][rounds]])
    held_out = [h["success"] for h in record["held_out"][rounds]]
    goals = fused.shape[1]
    choices = {}
    if used > 0:
        choices[f"fused reward, {used} validation goals (the run's rule)"] = int(np.argmax(fused[:, :used].mean(1)))
    return choices | {
        f"fused reward, {goals} validation goals": int(np.argmax(fused.mean(1))),
        f"final progress (task metric), {goals} validation goals": int(np.argmax(progress.mean(1))),
        "last round": last,
        "best held-out success (hindsight, not a rule)": int(np.argmax(held_out)),
    }


def round_choice_lines(results: list[dict[str, Any]], used: int) -> list[str]:
    """Markdown table: mean held-out mean-action success (change from BC, points) per rule and number of rounds."""
    tracked = [r for r in results if "rounds" in r]
    if not tracked:
        return []
    count = min(len(r["rounds"]["held_out"]) for r in tracked) - 1
    lasts = sorted({*range(4, count + 1, 4), count})
    choices = {last: [round_choices(r["rounds"], last, used) for r in tracked] for last in lasts}
    bc = np.mean([r["rounds"]["held_out"][0]["success"] for r in tracked])
    lines = [
        "",
        f"Choosing the round, from the tracked record ({len(tracked)} seeds; the finetuning is the same whatever is "
        "chosen, so each cell is exactly what that rule would have kept): mean held-out success of the mean action "
        f"(BC {bc:.3f}; change in points), with the rounds cut at 4, 8, … :",
        "",
        "| rule | " + " | ".join(f"{last} rounds" for last in lasts) + " |",
        "|---|" + "---|" * len(lasts),
    ]
    for rule in choices[lasts[0]][0]:
        cells = []
        for last in lasts:
            pairs = zip(tracked, choices[last], strict=True)
            kept = [r["rounds"]["held_out"][choice[rule]]["success"] for r, choice in pairs]
            cells.append(f"{np.mean(kept):.3f} ({100 * (np.mean(kept) - bc):+.1f})")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return lines


ROUND_SCORE_RULE = "kept by its kept round's score on the validation goals"
CHOICE_SCORE_RULE = "kept by its score on the `--restart-validation` goals"


def restart_choice_lines(results: list[dict[str, Any]]) -> list[str]:
    """Pooled mean-action held-out success of each restart alone and of each rule for choosing among them.

    Pooled over the seeds whose every restart carries its held-out record (``held_out_mean``, a diagnosis the choice
    never reads; runs of one restart each, combined by ``--best-of``, lack it for all but the one evaluated, and so do
    runs made before the record existed); the heading names those seeds when others lack it.
    """
    every = results
    results = [
        r
        for r in results
        if "restarts" in r and len(r["restarts"]) > 1 and all("held_out_mean" in s for s in r["restarts"])
    ]
    if not results:
        return []
    from mmpref.control.peeling.pipeline import best_restart

    which = "" if len(results) == len(every) else f": {' '.join(str(r['seed']) for r in results)}"

    bc = [r["bc_mean"]["goal_success"] for r in results]

    def outcomes(pick: Any) -> list[list[int]]:
        """Per seed, the held-out outcomes of the restart ``pick`` (restarts -> index) keeps."""
        return [r["restarts"][pick(r["restarts"])]["held_out_mean"]["goal_success"] for r in results]

    def kept_on(score: Any) -> list[list[int]]:
        """The restart :func:`best_restart` keeps on ``score`` (a restart's record -> float)."""
        return outcomes(lambda restarts: best_restart([score(s) for s in restarts]))

    rules: list[tuple[str, list[list[int]]]] = [
        (f"restart {i} alone", outcomes(lambda restarts, i=i: i)) for i in range(len(results[0]["restarts"]))
    ]
    rules.append((ROUND_SCORE_RULE, kept_on(lambda s: s["validation"])))
    if all("choice" in s for r in results for s in r["restarts"]):
        rules.append((CHOICE_SCORE_RULE, kept_on(lambda s: s["choice"])))
    rules.append(
        (
            "best in hindsight (chosen on the held-out goals: not a rule one can run)",
            kept_on(lambda s: s["held_out_mean"]["success"]),
        )
    )
    base = float(np.mean(np.concatenate(bc)))
    lines = [
        "",
        f"Choosing the restart ({len(results)} seeds{which}; every restart's mean-action policy on the held-out "
        f"goals, a diagnosis the choice never reads; BC {base:.3f}; change in points, ± 95 % over the goals, paired):",
        "",
        "| restart or rule | success | change |",
        "|---|---|---|",
    ]
    for name, kept in rules:
        success = float(np.mean(np.concatenate(kept)))
        lines.append(
            f"| {name} | {success:.3f} | {100 * (success - base):+.1f} ± {100 * paired_interval(bc, kept):.1f} |"
        )
    by_name = dict(rules)
    if CHOICE_SCORE_RULE in by_name:  # the two rules on the same restarts: paired per goal
        before, after = by_name[ROUND_SCORE_RULE], by_name[CHOICE_SCORE_RULE]
        diff = np.concatenate(after) - np.concatenate(before)
        lines += [
            "",
            f"Choosing on the `--restart-validation` goals against the kept rounds' scores: "
            f"{100 * diff.mean():+.1f} ± {100 * paired_interval(before, after):.1f} points, paired "
            f"({int((diff > 0).sum())} goals won, {int((diff < 0).sum())} lost).",
        ]
    return lines


def write_report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    from mmpref.data import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "bench_peeling_cpu.json", "w") as handle:
        json.dump({"meta": meta, "results": results}, handle, indent=1)
    lines = [
        "# Peeling-style two-stage finetuning: BC vs BC + trajectory DPO",
        "",
        f"machine: {meta['machine']}; date {meta['date']}",
        "",
        "command: `" + meta["command"] + "`",
        "",
        "Success rate and final progress (1 − d_T/d_0 of the object-to-goal distance, the continuous quality "
        f"metric) over {meta['args']['eval_episodes']} held-out goals per seed, for the policy as trained "
        "(**sample**) and its mean action (**mean**). Same goals for BC and the finetuned policy.",
        "",
        "| seed | demo success | reward pair acc. | BC success (sample) | +DPO success (sample) "
        "| BC progress (sample) | +DPO progress (sample) | BC success (mean) | +DPO success (mean) "
        "| BC progress (mean) | +DPO progress (mean) | reference unchanged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['seed']} | {r['demo_success']:.2f} | {r['reward_pair_accuracy']:.2f} "
            f"| {r['bc_sample']['success']:.2f} | {r['ft_sample']['success']:.2f} "
            f"| {r['bc_sample']['progress']:.2f} | {r['ft_sample']['progress']:.2f} "
            f"| {r['bc_mean']['success']:.2f} | {r['ft_mean']['success']:.2f} "
            f"| {r['bc_mean']['progress']:.2f} | {r['ft_mean']['progress']:.2f} | {r['reference_unchanged']} |"
        )
    if results:
        lines += [
            "",
            "Mean over seeds (change in brackets: percentage points for success and progress, relative for jerk; ± is "
            "the 95 % interval of a success change over all goals: paired when each goal's outcomes were recorded, "
            "else computed as if BC's and the finetuned policy's goals were independent, which is conservative):",
            "",
        ]
        goals = len(results) * meta["args"]["eval_episodes"]

        def interval(bc: float, ft: float, before: str, after: str) -> str:
            if all("goal_success" in r[before] and "goal_success" in r[after] for r in results):
                half = paired_interval(
                    [r[before]["goal_success"] for r in results], [r[after]["goal_success"] for r in results]
                )
                return f" ± {100 * half:.1f}, 95 % over {goals} goals, paired"
            return f" ± {100 * difference_interval(bc, ft, goals):.1f}, 95 % over {goals} goals, unpaired"

        for mode in ("sample", "mean"):
            for metric in ("success", "progress", "jerk"):
                bc = np.mean([r[f"bc_{mode}"][metric] for r in results])
                ft = np.mean([r[f"ft_{mode}"][metric] for r in results])
                change = (
                    f"{100 * (ft - bc) / max(bc, 1e-12):+.0f} %" if metric == "jerk" else f"{100 * (ft - bc):+.1f}"
                )
                if metric == "success":
                    change += interval(bc, ft, f"bc_{mode}", f"ft_{mode}")
                    # a gain in points is capped by what BC leaves to win: say how much of that was won
                    won = f"{100 * (ft - bc) / (1 - bc):.0f} %" if bc < 1 else "n/a"
                    change += f"; headroom to every goal solved +{100 * (1 - bc):.1f}, {won} of it won"
                lines.append(f"- {mode}, {metric}: BC {bc:.3f} → BC + DPO {ft:.3f} ({change})")
        if all("bc_tempered_sample" in r for r in results):
            temperature = meta["args"].get("explore_temperature")
            for metric in ("success", "progress"):
                bc = np.mean([r["bc_tempered_sample"][metric] for r in results])
                ft = np.mean([r["ft_sample"][metric] for r in results])
                change = f"{100 * (ft - bc):+.1f}" + (
                    interval(bc, ft, "bc_tempered_sample", "ft_sample") if metric == "success" else ""
                )
                lines.append(
                    f"- sample, {metric}, against BC sampled at the exploration temperature ({temperature}; no "
                    f"finetuning): BC {bc:.3f} → BC + DPO {ft:.3f} ({change})"
                )
        lines += ["", "Finetuning rounds (success of the on-policy rollouts per round):", ""]
        for r in results:
            lines.append(f"- seed {r['seed']}: " + " ".join(f"{s:.2f}" for s in r["finetune_log"]["success"]))
        if any(r["finetune_log"].get("validation") for r in results):
            lines += ["", "Fused-reward score of the mean-action policy on the validation goals (round 0 = BC):", ""]
            for r in results:
                log = r["finetune_log"]
                scores = " ".join(f"{s:.3f}" for s in log["validation"])
                lines.append(f"- seed {r['seed']}: {scores}; kept round {log['kept_round']}")
        if any("restarts" in r for r in results):
            lines += [
                "",
                "Restarts (stage 2 run again from BC with its own exploration; the validation score of each "
                "restart's kept round, and after / its score on the `--restart-validation` goals the restart is "
                "chosen on; in brackets its mean-action held-out success, where recorded; [x] = the restart kept, "
                "the best score):",
                "",
            ]
            for r in results:
                if "restarts" in r:
                    cells = []
                    for s in r["restarts"]:
                        cell = f"{s['restart']}: {s['validation']:.3f}"
                        cell += f" / {s['choice']:.3f}" if "choice" in s else ""
                        cell += f" (held-out {s['held_out_mean']['success']:.2f})" if "held_out_mean" in s else ""
                        cells.append(f"[{cell}]" if s["restart"] == r["restart_kept"] else cell)
                    lines.append(f"- seed {r['seed']}: " + " ".join(cells))
            lines += restart_choice_lines(results)
        if any("rounds" in r for r in results):
            lines += [
                "",
                "Held-out success of the mean-action policy after every round (round 0 = BC; `--track-rounds`, "
                "diagnosis only: no round is chosen on it; [x] = the round kept):",
                "",
            ]
            for r in results:
                if "rounds" in r:
                    kept = r["finetune_log"].get("kept_round")
                    cells = [
                        f"[{h['success']:.2f}]" if i == kept else f"{h['success']:.2f}"
                        for i, h in enumerate(r["rounds"]["held_out"])
                    ]
                    lines.append(f"- seed {r['seed']}: " + " ".join(cells))
            lines += round_choice_lines(results, meta["args"].get("validation") or 0)
        lines += ["", "Timings (s): " + "; ".join(f"seed {r['seed']}: {r['timings']}" for r in results)]
    with atomic_write(out / "bench_peeling_cpu.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")


def check_same_settings(paths: list[Path], runs: list[dict[str, Any]], also_ignored: tuple[str, ...] = ()) -> None:
    """Exit naming the flags in which a run's settings differ from the first run's (seeds and paths aside).

    A flag missing from an older run's recorded arguments did not exist yet; the run used what is now its default,
    so it counts as that default.
    """
    # track_rounds only adds a record (training and the choice of round are the same either way)
    ignored = ("seeds", "out_dir", "cache_dir", "save_dir", "workers", "merge", "best_of", "track_rounds")
    ignored += also_ignored
    defaults = {
        "windows": 1,  # runs before --windows ranked whole rollouts
        "residual_hidden": 0,  # and before --residual-hidden finetuned the whole policy
        "oracle": False,  # and before --oracle ranked by the fused reward
        "noise_correlation": 0.0,  # and before --noise-correlation explored with independent noise
        "window_credit": "own",  # and before --window-credit ranked each window by its own share
        "censored": False,  # and before --censored scored clipped actions by the density
        "refit_rated": 0,  # and before --refit-rated fit the reward once
        "select_on": "fused",  # and before --select-on chose the round on the fused reward
        "replay_rounds": 0,  # and before --replay-rounds trained each round on its own groups only
        "log_floor": 0.0,  # and before --log-floor measured progress linearly
        "lr_decay": 1.0,  # and before --lr-decay kept the learning rate constant
        "round_average": 0.0,  # and before --round-average kept each round's own weights
        "restarts": 1,  # and before --restarts ran stage 2 once
        "first_restart": 0,  # and before --first-restart ran restart 0
        "restart_validation": 0,  # and before --restart-validation chose the restart on the validation goals
    }

    def settings(run: dict[str, Any]) -> dict[str, Any]:
        return defaults | {k: v for k, v in run["meta"]["args"].items() if k not in ignored}

    for path, run in zip(paths[1:], runs[1:], strict=True):
        if settings(run) != settings(runs[0]):
            differ = sorted(k for k in settings(run) if settings(run)[k] != settings(runs[0]).get(k))
            raise SystemExit(f"{path}: settings differ from {paths[0]} in {differ}; combine runs of one setting only")


def merge_reports(paths: list[Path], out: Path) -> None:
    """One report over the seeds of several runs whose settings (all but the seeds) agree."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    check_same_settings(paths, runs)
    results = sorted((r for run in runs for r in run["results"]), key=lambda r: r["seed"])
    if len({"draws" in r["ft_mean"] for r in results}) > 1:
        raise SystemExit(
            f"{[str(p) for p in paths]}: some runs counted each held-out goal once, others drew goals with repeats "
            "(before evaluate_policy skipped them); merge runs of one evaluation only"
        )
    seeds = [r["seed"] for r in results]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seeds repeat across {[str(p) for p in paths]} ({seeds}); merge runs of distinct seeds")
    meta = dict(runs[0]["meta"])
    meta["command"] = " ; ".join(run["meta"]["command"] for run in runs)
    meta["date"] = ", ".join(run["meta"]["date"] for run in runs)
    write_report(results, meta, out)
    print((out / "bench_peeling_cpu.md").read_text())


def restart_record(result: dict[str, Any], first_restart: int) -> list[dict[str, Any]]:
    """The restarts one seed's result ran: its own list, or (a run of one restart) that restart's kept round."""
    from mmpref.control.peeling.pipeline import restart_seed

    if "restarts" in result:
        return result["restarts"]
    log = result["finetune_log"]
    return [
        {
            "restart": first_restart,
            "seed": restart_seed(result["seed"], first_restart),
            "kept_round": log["kept_round"],
            "validation": log["validation"][log["kept_round"]],
        }
    ]


def choice_score(record: dict[str, Any]) -> float:
    """What a restart is chosen on: its score on the ``--restart-validation`` goals, else its kept round's."""
    return record.get("choice", record["validation"])


def best_of_reports(paths: list[Path], out: Path) -> None:
    """One report keeping, per seed, the restart whose kept round scored best on the validation goals.

    (On the ``--restart-validation`` goals where the runs scored the restarts there: :func:`choice_score`.)

    The runs hold other restarts (``--first-restart``) of one setting, so the report is what ``--restarts`` over all
    of them would give (:func:`~mmpref.control.peeling.pipeline.best_restart`: the highest validation score, the
    earliest restart of equal ones). Only seeds every run holds are reported.
    """
    from mmpref.control.peeling.pipeline import best_restart

    runs = [json.loads(Path(p).read_text()) for p in paths]
    check_same_settings(paths, runs, also_ignored=("restarts", "first_restart"))
    by_seed = [{r["seed"]: r for r in run["results"]} for run in runs]
    seeds = sorted(set.intersection(*(set(b) for b in by_seed)))
    if not seeds:
        raise SystemExit(f"{[str(p) for p in paths]} share no seed; --best-of needs runs of the same seeds")
    results = []
    for seed in seeds:
        candidates = []  # (restart record, the result that restart's run reported)
        for run, table in zip(runs, by_seed, strict=True):
            first = run["meta"]["args"].get("first_restart", 0)
            candidates += [(record, table[seed]) for record in restart_record(table[seed], first)]
        candidates.sort(key=lambda c: c[0]["restart"])
        restarts = [c[0]["restart"] for c in candidates]
        if len(set(restarts)) != len(restarts):
            raise SystemExit(f"seed {seed}: restarts {restarts} repeat across {[str(p) for p in paths]}")
        kept = best_restart([choice_score(c[0]) for c in candidates])
        bc = {json.dumps(c[1]["bc_mean"]["goal_success"]) for c in candidates}
        if len(bc) > 1:
            raise SystemExit(f"seed {seed}: BC's held-out outcomes differ across the runs; restarts share stage 1")
        record, result = candidates[kept]
        if result.get("restart_kept", record["restart"]) != record["restart"]:
            raise SystemExit(f"seed {seed}: restart {record['restart']} was not the one its run evaluated")
        results.append({**result, "restarts": [c[0] for c in candidates], "restart_kept": record["restart"]})
    meta = dict(runs[0]["meta"])
    meta["command"] = " ; ".join(run["meta"]["command"] for run in runs) + " ; --best-of"
    meta["date"] = ", ".join(run["meta"]["date"] for run in runs)
    meta["args"] = {**meta["args"], "restarts": len(results[0]["restarts"]), "first_restart": 0}
    write_report(results, meta, out)
    print((out / "bench_peeling_cpu.md").read_text())


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that reruns ``args``: every set flag, a False switch only where its default is True (``--no-x``)."""
    words = []
    for key, value in vars(args).items():
        if value is None or key in ("out_dir", "save_dir", "cache_dir", "merge", "best_of"):
            continue
        if isinstance(value, bool):
            if value or parser.get_default(key):
                words.append(("--" if value else "--no-") + key.replace("_", "-"))
            continue
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        words.append(f"--{key.replace('_', '-')} {shown}")
    return "OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_peeling.py " + " ".join(words)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags (defaults: the recipe's setting, ``recipes/control/peeling/push.yaml``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="push-v3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--noise-low", type=float, default=0.1)
    parser.add_argument("--noise-high", type=float, default=0.6)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--squash", default="clip", choices=["clip", "tanh"])
    parser.add_argument("--bc-epochs", type=int, default=100)
    parser.add_argument("--pool", type=int, default=16, help="fixed-goal training environments")
    parser.add_argument("--rated", type=int, default=64, help="rated BC rollouts for the fused reward")
    parser.add_argument("--rating-noise", type=float, default=0.0)
    parser.add_argument("--smoothness", type=float, default=0.0)
    parser.add_argument(
        "--log-floor", type=float, default=0.0, help="ε of the metric's log-distance form (0: linear progress)"
    )
    parser.add_argument("--reward-epochs", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--loss", default="bradley_terry", help="core loss: pairwise, or listwise over each group")
    parser.add_argument("--explore-temperature", type=float, default=0.5, help="σ multiplier of the rollouts")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-decay", type=float, default=1.0, help="learning rate × this after every round")
    parser.add_argument(
        "--round-average",
        type=float,
        default=0.0,
        help="λ of the exponential average of the rounds' weights that is validated and kept (0: off)",
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--nll-weight", type=float, default=1.0)
    parser.add_argument("--demo-weight", type=float, default=0.0, help="offline term on the ranked demonstrations")
    parser.add_argument("--residual-hidden", type=int, default=0, help="> 0: train a residual MLP on frozen BC")
    parser.add_argument("--windows", type=int, default=5, help="rank rollouts window by window (1: whole)")
    parser.add_argument("--validation", type=int, default=0, help="fixed-goal envs scoring each round")
    parser.add_argument("--select-best", action="store_true", help="keep the round the validation goals score best")
    parser.add_argument(
        "--select-on", default="fused", choices=["fused", "metric"], help="validation by the fused reward or metric"
    )
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--noise-correlation", type=float, default=0.97, help="AR(1) ρ of the exploration noise")
    parser.add_argument("--window-credit", default="to_go", choices=["own", "to_go"], help="own share or to go")
    parser.add_argument(
        "--censored", action=argparse.BooleanOptionalAction, default=True, help="censored clip likelihood in stage 2"
    )
    parser.add_argument(
        "--replay-rounds", type=int, default=0, help="each round also trains on the previous rounds' ranked groups"
    )
    parser.add_argument("--refit-rated", type=int, default=0, help="rate this many rollouts a round and refit")
    parser.add_argument("--oracle", action="store_true", help="rank by the true return (upper bound), not the reward")
    parser.add_argument(
        "--track-rounds", action="store_true", help="also evaluate every round on the held-out goals (diagnosis)"
    )
    parser.add_argument(
        "--restarts", type=int, default=1, help="stage-2 runs per seed; the best on the validation goals is kept"
    )
    parser.add_argument(
        "--first-restart", type=int, default=0, help="index of the first restart (split restarts across runs)"
    )
    parser.add_argument(
        "--restart-validation",
        type=int,
        default=0,
        help="choose the restart on this many validation goals (0: the kept round's score on --validation)",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--save-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse stage 1 (demos, BC, reward) per seed")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument(
        "--best-of",
        type=Path,
        nargs="+",
        default=None,
        help="instead of running: per seed, the restart of these runs (--first-restart) scoring best on validation",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="instead of running: one report from these bench_peeling_cpu.json files (same settings, other seeds)",
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.merge:
        merge_reports(args.merge, args.out_dir)
        return
    if args.best_of:
        best_of_reports(args.best_of, args.out_dir)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(parser, args),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": f"2 vCPU AMD EPYC ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        "CPU only, shared with other jobs",
    }
    jobs = [
        {
            **vars(args),
            "seed": s,
            "save_dir": str(args.save_dir) if args.save_dir else None,
            "cache_dir": str(args.cache_dir) if args.cache_dir else None,
        }
        for s in args.seeds
    ]
    for job in jobs:
        job.pop("seeds")
    results: list[dict[str, Any]] = []
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for result in pool.imap_unordered(run_seed, jobs):
                results.append(result)
                write_report(sorted(results, key=lambda r: r["seed"]), meta, args.out_dir)
    else:
        for job in jobs:
            results.append(run_seed(job))
            write_report(results, meta, args.out_dir)
    print((args.out_dir / "bench_peeling_cpu.md").read_text())


if __name__ == "__main__":
    main()
