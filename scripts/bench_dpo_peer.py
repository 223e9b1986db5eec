#!/usr/bin/env python
"""mmpref's pipeline Diffusion-DPO against diffusers' ``train_diffusion_dpo.py`` on the same tiny inputs, interleaved.

The peer harness in ``../shared/peers/diffusers-dpo/`` (``run_peer.sh``, ``make_tiny.py``, ``summarize.py``) builds a
tiny SD 1.5-layout pipeline and Pick-a-Pic-format data and runs the peer script unpatched; this script calls it with
``RUNS=1`` and, between its calls, runs ``mmpref`` on the same pipeline folder and Parquet file with the same batch,
resolution, LoRA rank, learning rate, β_dpo, steps and thread count:

* ``mmpref-cold``: empty latent cache, so the run encodes every pair once before step 1 (the honest whole-run figure);
* ``mmpref-warm``: the cache from the cold run (what later epochs and runs see);
* with ``--long-steps L``, one more peer and warm mmpref run of L steps: the extra user + system CPU seconds over the
  short runs, divided by the extra steps, is each side's CPU cost per step, independent of the machine's load.

Every run is measured with ``/usr/bin/time -v`` (peak RSS, wall, user + system CPU seconds); s/step is the median
step-to-step wall time after ``--warmup`` steps (the peer's from its TensorBoard ``loss`` events, as the harness does;
mmpref's from a step callback). On a shared, loaded machine wall-clock figures drift between runs: interleaving keeps
the comparison fair, and the CPU seconds are load-independent.

The peer script is fetched by the user (``git show <commit>:examples/research_projects/diffusion_dpo/
train_diffusion_dpo.py`` from a diffusers clone) into a folder outside this repository; none of it is imported here.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_dpo_peer.py --peer-script /tmp/peer/train_diffusion_dpo.py \\
        --peer-python /tmp/peervenv/bin/python --work /tmp/bench-peer --res 64 --runs 2 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# the harness folder (our own scripts around the peer); override with MMPREF_PEER_HARNESS
HARNESS = Path(
    os.environ.get("MMPREF_PEER_HARNESS", Path(__file__).resolve().parents[2] / "shared" / "peers" / "diffusers-dpo")
)
SCALE = Path(__file__).resolve().parent / "bench_dpo_scale.py"


def time_v(path: Path) -> dict[str, float]:
    """Peak RSS (MiB), wall and CPU seconds from a ``/usr/bin/time -v`` report."""
    text = path.read_text()
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1)) for k in ("User", "System"))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1).split(":")
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall)))
    return {"peak_rss_mib": round(rss, 1), "cpu_s": round(cpu, 2), "wall_s": round(seconds, 2)}


def run_peer(args: argparse.Namespace, index: int) -> dict:
    env = dict(os.environ, PYTHON=args.peer_python, RUNS="1", STEPS=str(args.steps), RES=str(args.res))
    env |= {"BATCH": str(args.batch), "RANK": str(args.rank), "WARMUP": str(args.warmup), "THREADS": args.threads}
    out = Path(args.work) / "peer"
    subprocess.run(
        ["bash", str(HARNESS / "run_peer.sh"), args.peer_script, str(out)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    figures = time_v(out / "run-1" / "time.txt")
    figures |= {k: run.get(k) for k in ("s_per_step_median", "start_to_first_step_s")}
    shutil.copytree(out / "run-1", Path(args.work) / f"peer-run-{index}", dirs_exist_ok=True)
    return figures


def run_mmpref(args: argparse.Namespace, inputs: Path, cache: Path, tag: str) -> dict:
    report = Path(args.work) / f"{tag}.json"
    timing = Path(args.work) / f"{tag}.time.txt"
    pairs = next((inputs / "tiny-pickapic" / "data").glob("*.parquet"))
    cmd = ["/usr/bin/time", "-v", "-o", str(timing), sys.executable, str(SCALE), "worker"]
    cmd += ["--pipeline", str(inputs / "tiny-sd15"), "--parquet", str(pairs), "--cache-dir", str(cache)]
    cmd += ["--steps", str(args.steps), "--batch", str(args.batch), "--rank", str(args.rank)]
    cmd += ["--warmup", str(args.warmup), "--report", str(report)]
    env = dict(os.environ, OMP_NUM_THREADS=args.threads, MKL_NUM_THREADS=args.threads, BENCH_T0=str(time.time()))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    inner = json.loads(report.read_text())
    keys = ("s_per_step_median", "cpu_s_per_step_median", "start_to_first_step_s", "cache")
    return time_v(timing) | {k: inner[k] for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-script", required=True, help="train_diffusion_dpo.py, outside this repository")
    parser.add_argument("--peer-python", required=True, help="python of a venv with the peer's dependencies")
    parser.add_argument("--work", default="/tmp/mmpref-bench-dpo-peer")
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", default="1")
    parser.add_argument(
        "--long-steps",
        type=int,
        default=0,
        help="also one peer and one warm mmpref run of this many steps: CPU s/step = ΔCPU / Δsteps (load-proof)",
    )
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    inputs = work / "peer" / f"inputs-r{args.res}-n64-s0"
    rows: dict[str, list[dict]] = {"peer": [], "mmpref-cold": [], "mmpref-warm": []}
    for i in range(args.runs):
        rows["peer"].append(run_peer(args, i))  # its first call also builds the inputs mmpref then reads
        print("peer", json.dumps(rows["peer"][-1]), flush=True)
        cache = work / f"cache-{i}"
        shutil.rmtree(cache, ignore_errors=True)
        for kind in ("mmpref-cold", "mmpref-warm"):
            rows[kind].append(run_mmpref(args, inputs, cache, f"{kind}-{i}"))
            print(kind, json.dumps(rows[kind][-1]), flush=True)
    if args.long_steps:
        short = args.steps
        args.steps = args.long_steps
        rows["peer-long"] = [run_peer(args, args.runs)]
        rows["mmpref-warm-long"] = [run_mmpref(args, inputs, work / "cache-0", "mmpref-warm-long")]
        args.steps = short
        for kind, base in (("peer-long", "peer"), ("mmpref-warm-long", "mmpref-warm")):
            extra = rows[kind][0]["cpu_s"] - statistics.median(r["cpu_s"] for r in rows[base])
            rows[kind][0]["cpu_s_per_extra_step"] = round(extra / (args.long_steps - args.steps), 4)
            print(kind, json.dumps(rows[kind][0]), flush=True)
    summary = {
        kind: {
            k: statistics.median(r[k] for r in runs)
            for k in ("s_per_step_median", "peak_rss_mib", "wall_s", "cpu_s", "start_to_first_step_s")
        }
        for kind, runs in rows.items()
    }
    if args.long_steps:
        ratio = rows["peer-long"][0]["cpu_s_per_extra_step"] / rows["mmpref-warm-long"][0]["cpu_s_per_extra_step"]
        summary["cpu_per_step_speedup_vs_peer"] = round(ratio, 2)
    peer = summary["peer"]["s_per_step_median"]
    for kind in ("mmpref-cold", "mmpref-warm"):
        summary[kind]["speedup_per_step_vs_peer"] = round(peer / summary[kind]["s_per_step_median"], 2)
    result = {"config": vars(args), "runs": rows, "summary": summary}
    (work / f"results-r{args.res}-s{args.steps}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
