"""One table of every peeling benchmark variant, from the JSON reports that ``scripts/bench_peeling.py`` wrote.

Usage: ``.venv/bin/python scripts/peeling_variants_table.py [--dir docs/benchmarks/peeling_variants]
[--reference docs/benchmarks/bench_peeling_cpu.json] [--out docs/benchmarks/peeling_variants.md]``

A row per ``*.json`` in ``--dir`` (each a ``bench_peeling_cpu.json`` renamed after its variant): the task and seeds,
the flags that differ from the reference report's, and the mean over seeds of the mean-action and the sampled policy's
held-out success, BC → BC + DPO, with the change in percentage points ± its 95 % interval (paired over the goals
when each goal's outcomes were recorded, else the conservative unpaired one), and the change of final progress.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = runpy.run_path(str(ROOT / "scripts" / "bench_peeling.py"))
# bookkeeping flags: where a run wrote or cached, how it was split over processes; not settings of the method
IGNORED = {"seeds", "workers", "save_dir", "cache_dir", "out_dir", "merge", "best_of", "first_restart"}


def differing_flags(args: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``--flag value`` for every setting that differs from the reference run's (the script's defaults where unset).

    A run older than a flag does not record it; such flags are named once, as "predates", since the run behaved as
    the code did before the flag existed.
    """
    flags = [
        f"`--{key.replace('_', '-')} {args[key]}`"
        for key in sorted(args)
        if key not in IGNORED and key in defaults and args[key] != defaults[key]
    ]
    missing = sorted(k for k in defaults if k not in args and k not in IGNORED)
    if len(missing) > 6:
        flags.append(f"predates {len(missing)} later flags")
    elif missing:
        flags.append("predates " + ", ".join(f"`--{k.replace('_', '-')}`" for k in missing))
    return " ".join(flags) or "(the reference setting)"


def change(results: list[dict[str, Any]], before: str, after: str, goals: int) -> tuple[float, float, str]:
    """Mean success before and after, and the change in points ± its 95 % interval."""
    bc = float(np.mean([r[before]["success"] for r in results]))
    ft = float(np.mean([r[after]["success"] for r in results]))
    if all("goal_success" in r[before] and "goal_success" in r[after] for r in results):
        half = BENCH["paired_interval"](
            [r[before]["goal_success"] for r in results], [r[after]["goal_success"] for r in results]
        )
        kind = "p"
    else:
        half, kind = BENCH["difference_interval"](bc, ft, goals), "u"
    return bc, ft, f"{100 * (ft - bc):+.1f} ± {100 * half:.1f}{kind}"


def row(path: Path, defaults: dict[str, Any], where: Path) -> str:
    """The table row of one variant report, its link relative to the folder ``where`` the table is written."""
    report = json.loads(path.read_text())
    meta, results = report["meta"], report["results"]
    args = meta["args"]
    goals = len(results) * args["eval_episodes"]
    seeds = sorted(r["seed"] for r in results)
    bc, ft, mean_change = change(results, "bc_mean", "ft_mean", goals)
    bc_s, ft_s, sample_change = change(results, "bc_sample", "ft_sample", goals)
    progress = np.mean([r["ft_mean"]["progress"] - r["bc_mean"]["progress"] for r in results])
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    seed_text = f"{seeds[0]}-{seeds[-1]}" if contiguous else " ".join(map(str, seeds))
    link = Path(os.path.relpath(path.with_suffix(".md"), where)).as_posix()
    return (
        f"| [{path.stem}]({link}) | {results[0].get('task', args.get('task'))} "
        f"| {seed_text} | {differing_flags(args, defaults)} | {bc:.3f} → {ft:.3f} | **{mean_change}** "
        f"| {100 * progress:+.1f} | {bc_s:.3f} → {ft_s:.3f} ({sample_change}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "docs/benchmarks/peeling_variants")
    parser.add_argument("--reference", type=Path, default=ROOT / "docs/benchmarks/bench_peeling_cpu.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/peeling_variants.md")
    args = parser.parse_args()
    reference = json.loads(args.reference.read_text())["meta"]["args"]
    defaults = vars(BENCH["build_parser"]().parse_args([])) | reference
    lines = [
        "# Peeling on Meta-World: every variant benchmarked, in one table",
        "",
        "Written by `.venv/bin/python scripts/peeling_variants_table.py` from the JSON reports of "
        "`scripts/bench_peeling.py`: the reference run first ([`bench_peeling_cpu`](bench_peeling_cpu.md), the "
        "setting of the recipe `recipes/control/peeling/push.yaml`), then every variant in "
        f"[`{args.dir.name}/`]({args.dir.name}/) (each run's `bench_peeling_cpu.json`, renamed after the variant; "
        "its markdown report beside it holds the per-seed tables and the exact command). Flags are those that "
        "differ from the reference run's (the script's defaults for flags added after it). Success is over 30 "
        "held-out goals per seed (20 for nll0), mean over seeds; the change is in percentage points ± its 95 % "
        "interval (p: paired over the goals; u: unpaired, conservative); progress "
        "is the change of final 1 − d_T/d_0 of the object-to-goal distance, in points. What each variant was for, in "
        f"the order tried, with the reasoning: [`{args.dir.name}/history.md`]({args.dir.name}/history.md).",
        "",
        "| report | task | seeds | flags (vs the reference) | success, mean action: BC → BC + DPO | change "
        "| progress change | success, sampled: BC → BC + DPO (change) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    paths = [args.reference, *sorted(args.dir.glob("*.json"))]
    lines += [row(path, defaults, args.out.parent) for path in paths]
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({len(paths)} reports)")


if __name__ == "__main__":
    main()
