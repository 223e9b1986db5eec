#!/usr/bin/env python
"""Diffusion-DPO on a local pipeline at data scale: peak memory against the number of pairs, and the cache's speed-up.

For each pair count N, a Pick-a-Pic-format Parquet file of N pairs (JPEG bytes of mixed sizes, 64² and 96×80 by
default, as Pick-a-Pic's images vary) is written once; then, each in a fresh process:

* ``cold``: an empty cache: every pair is VAE- and text-encoded once, then ``--steps`` DPO steps;
* ``warm``: the same command again: the cache is found by content, so no image or caption is encoded.

Each run reports peak RSS (``ru_maxrss`` of the worker process: imports, loading, caching, training), seconds from
process start to the end of the first step, the cache's seconds, and the median s/step after ``--warmup`` steps.
``--epoch-pairs N`` adds, for that N, a one-epoch cold run against a one-epoch warm run (the second-epoch speed-up).

Usage (a pipeline folder of any supported family; e.g. the SD 1.5-layout tiny one that
../shared/peers/diffusers-dpo/make_tiny.py builds)::

    OMP_NUM_THREADS=1 python scripts/bench_dpo_scale.py --pipeline PIPE --work /tmp/scale --pairs 1000 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

START = time.time()


def write_pairs(path: Path, n: int, sizes: list[tuple[int, int]], seed: int = 0) -> None:
    """N pairs of smooth random JPEGs (small files, like photos), labels alternating, streamed to Parquet."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)

    def jpeg(w: int, h: int) -> bytes:
        small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, n, 1000):
        rows = range(start, min(n, start + 1000))
        table = pa.table(
            {
                "caption": [f"a photo of thing number {i % 997}" for i in rows],
                "jpg_0": [jpeg(*sizes[i % len(sizes)]) for i in rows],
                "jpg_1": [jpeg(*sizes[(i + 1) % len(sizes)]) for i in rows],
                "label_0": [float(i % 2) for i in rows],
            }
        )
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=1000)
    writer.close()
    os.replace(tmp, path)


def worker(args: argparse.Namespace) -> None:
    """One training run in this process; writes its figures as JSON to ``args.report``."""
    import lightning as L
    import torch

    from mmpref.vision.diffusion.pipelines import PipelineDPOConfig, train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ends: list[float] = []
    cpu: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *_: object) -> None:
            ends.append(time.time())
            cpu.append(time.process_time())

    cfg = PipelineDPOConfig(
        pipeline=args.pipeline,
        pairs=args.parquet,
        ties="drop",
        cache_dir=args.cache_dir,
        steps=args.steps,
        batch_size=args.batch,
        lora_rank=args.rank,
        lr=1e-5,
        beta=2500.0,
        accelerator="cpu",
        resize="center",
    )
    _, _, report = train(cfg, callbacks=[Clock()])
    steps = [b - a for a, b in zip(ends, ends[1:], strict=False)][args.warmup - 1 :]
    cpu_steps = [b - a for a, b in zip(cpu, cpu[1:], strict=False)][args.warmup - 1 :]
    figures = {
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "start_to_first_step_s": round(ends[0] - float(os.environ.get("BENCH_T0", START)), 2),
        "s_per_step_median": round(statistics.median(steps), 4) if steps else None,
        # CPU seconds of this one-thread process: what a step costs on an idle core, whatever else runs on the box
        "cpu_s_per_step_median": round(statistics.median(cpu_steps), 4) if cpu_steps else None,
        "cpu_to_first_step_s": round(cpu[0], 2),
        "train_seconds": report["train_seconds"],
        "steps": report["steps"],
        "cache": report["cache"],
        # CPU seconds of each whole epoch's steps; epoch 1 also pays the cache build (what epoch 2 skips)
        "epoch_cpu_s": _epoch_cpu(cpu, -(-report["cache"]["pairs"] // args.batch), report["cache"]["cpu_seconds"]),
        "wall_s": round(time.time() - float(os.environ.get("BENCH_T0", START)), 2),
    }
    Path(args.report).write_text(json.dumps(figures, indent=2))


def _epoch_cpu(cpu: list[float], per_epoch: int, cache_cpu: float) -> list[float]:
    """CPU seconds of each complete epoch, from the per-step CPU clock (the first step's cost is estimated)."""
    steps = [b - a for a, b in zip(cpu, cpu[1:], strict=False)]
    steps = steps[:1] + steps  # the first step's own cost ≈ the second's (its clock also holds start-up)
    epochs = [round(sum(steps[i : i + per_epoch]), 2) for i in range(0, len(steps) - per_epoch + 1, per_epoch)]
    if epochs:
        epochs[0] = round(epochs[0] + cache_cpu, 2)
    return epochs


def run_worker(pipeline: str, parquet: Path, cache: Path, steps: int, args: argparse.Namespace, tag: str) -> dict:
    report = Path(args.work) / f"{tag}.json"
    cmd = [sys.executable, __file__, "worker", "--pipeline", pipeline, "--parquet", str(parquet)]
    cmd += ["--cache-dir", str(cache), "--steps", str(steps), "--batch", str(args.batch), "--rank", str(args.rank)]
    cmd += ["--warmup", str(args.warmup), "--report", str(report)]
    env = dict(os.environ, BENCH_T0=str(time.time()))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    figures = json.loads(report.read_text())
    print(tag, json.dumps(figures), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=("bench", "worker"))
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--work", default="/tmp/mmpref-bench-dpo-scale")
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epoch-pairs", type=int, default=0, help="one-epoch cold vs warm runs at this N")
    parser.add_argument("--parquet")
    parser.add_argument("--cache-dir")
    parser.add_argument("--report")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for n in args.pairs:
        parquet = work / f"pairs-{n}.parquet"
        if not parquet.is_file():
            t = time.time()
            write_pairs(parquet, n, [(64, 64), (96, 80)])
            print(f"wrote {parquet} ({parquet.stat().st_size / 2**20:.1f} MiB) in {time.time() - t:.0f} s", flush=True)
        cache = work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        results[f"{n}-cold"] = run_worker(args.pipeline, parquet, cache, args.steps, args, f"n{n}-cold")
        results[f"{n}-warm"] = run_worker(args.pipeline, parquet, cache, args.steps, args, f"n{n}-warm")
    if args.epoch_pairs:
        n = args.epoch_pairs
        parquet, cache = work / f"pairs-{n}.parquet", work / f"cache-epoch-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        epoch = n // args.batch
        results["epoch-cold"] = run_worker(args.pipeline, parquet, cache, epoch, args, f"epoch{n}-cold")
        results["epoch-warm"] = run_worker(args.pipeline, parquet, cache, epoch, args, f"epoch{n}-warm")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {work / 'results.json'}")


if __name__ == "__main__":
    main()
