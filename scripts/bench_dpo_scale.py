#!/usr/bin/env python
"""Diffusion-DPO on a local pipeline at data scale: peak memory against the number of pairs, and the cache's speed-up.

For each pair count N, a Pick-a-Pic-format Parquet file of N pairs (JPEG bytes of mixed sizes, 64² and 96×80 by
default, as Pick-a-Pic's images vary) is written once; then, each in a fresh process:

* ``cold``: an empty cache: every pair is VAE- and text-encoded once, then ``--steps`` DPO steps;
* ``warm``: the same command again: the cache is found by content, so no image or caption is encoded.

Each run reports peak RSS (``ru_maxrss`` of the worker process: imports, loading, caching, training), seconds from
process start to the end of the first step, the cache's seconds, and the median s/step after ``--warmup`` steps.
``--epoch-pairs N`` adds, for that N, a one-epoch cold run against a one-epoch warm run (the second-epoch speed-up).

``--split`` measures the two phases of the real command line instead, each in its own process, as a user runs them:
(a) ``mmpref dpo-cache`` building the cache from empty, then (b) ``mmpref dpo`` training ``--steps`` steps from that
cache (it still streams the Parquet file once to find its pairs' keys). For each child it reports the peak RSS
(``ru_maxrss`` of that child alone, from ``os.wait4``), wall and CPU seconds (user + system), plus the Parquet
file's and the cache folder's size on disk. The Parquet file is written in row groups of 1,000 pairs, so the
generator holds 1,000 pairs at a time whatever N is. ``--stand-in`` makes (a) the same cache build (real pipeline
loaded, real Parquet streaming, decoding, resizing, content keys and shard writing, into the pipeline's own cache
namespace) with the VAE and text encoders replaced by random tensors of their real output shapes and dtypes: for N
where the real encoders would take hours on a CPU; (b) is then the real ``mmpref dpo`` on that cache.

Usage (a pipeline folder of any supported family; e.g. the SD 1.5-layout tiny one that
../shared/peers/diffusers-dpo/make_tiny.py builds)::

    OMP_NUM_THREADS=1 python scripts/bench_dpo_scale.py --pipeline PIPE --work /tmp/scale --pairs 1000 10000
    OMP_NUM_THREADS=1 nice python scripts/bench_dpo_scale.py --split --pipeline PIPE --work /tmp/scale --pairs 1000
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


def standin_build(args: argparse.Namespace) -> None:
    """``mmpref dpo-cache``'s build, its encoders replaced by random tensors of their real shapes (``--stand-in``)."""
    import torch

    from mmpref.vision.diffusion.latent_cache import build_cache, cache_namespace
    from mmpref.vision.diffusion.pipelines import load_family

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    folder = Path(args.pipeline)
    family = load_family(folder)
    namespace = cache_namespace(args.cache_dir, family, family.fingerprint(folder), "center", "float32")
    size = family.resolution
    latent = family.encode_images(torch.zeros(1, 3, size, size), torch.Generator().manual_seed(0))  # shapes only
    cond = family.encode_prompts(["a photo"])

    def images(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((len(pixels), *latent.shape[1:]), generator=generator, dtype=latent.dtype)

    def prompts(captions: list[str]) -> dict:
        return {k: torch.randn((len(captions), *v.shape[1:]), dtype=v.dtype) for k, v in cond.items()}

    family.encode_images, family.encode_prompts = images, prompts
    report = build_cache(family, args.parquet, namespace, ties="drop", resize="center", encode_batch=args.encode_batch)
    print(f"cache {namespace}: {report.pairs} pairs, {report.encoded} encoded (stand-in encoders), {report.seconds} s")


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


def _disk_mib(path: Path) -> float:
    """Bytes on disk of a file or a folder tree, in MiB."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def _high_water_mib(pid: int) -> float | None:
    """``VmHWM`` of a running process: the peak RSS of its own address space since its ``exec``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def measured(cmd: list[str], log: Path, poll_s: float = 0.02) -> dict:
    """Run ``cmd`` as a child; its own peak RSS, wall and CPU seconds.

    The peak is the child's ``VmHWM``, read every ``poll_s`` until it exits (a high-water mark, so only growth in the
    last ``poll_s`` can be missed). ``ru_maxrss`` from ``wait4`` is not used: a child started by vfork/fork from a
    large process (a test run, a notebook) inherits that process's high-water mark at ``exec``.
    """
    start = time.time()
    peak = 0.0
    with log.open("w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _high_water_mib(child.pid) or 0.0)
            time.sleep(poll_s)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {child.returncode}; see {log}")
    return {
        "peak_rss_mib": round(peak, 1),
        "wall_s": round(time.time() - start, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }


def run_split(n: int, parquet: Path, args: argparse.Namespace) -> dict:
    """(a) ``mmpref dpo-cache`` from an empty cache, then (b) ``mmpref dpo`` for ``--steps`` steps from it."""
    work = Path(args.work)
    cache, out = work / f"split-cache-{n}", work / f"split-out-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cli = [sys.executable, "-c", "import sys; from mmpref.cli import main; sys.exit(main())"]
    common = ["--pipeline", args.pipeline, "--pairs", str(parquet), "--ties", "drop", "--resize", "center"]
    common += ["--cache_dir", str(cache), "--encode_batch", str(args.encode_batch), "--accelerator", "cpu"]
    if args.stand_in:
        stand_in = [sys.executable, __file__, "standin", "--pipeline", args.pipeline, "--parquet", str(parquet)]
        stand_in += ["--cache-dir", str(cache), "--encode-batch", str(args.encode_batch)]
        build = measured(stand_in, work / f"split-{n}-cache.log")
    else:
        build = measured(cli + ["dpo-cache"] + common, work / f"split-{n}-cache.log")
    build["log"] = (work / f"split-{n}-cache.log").read_text().strip().splitlines()[-1]
    build["cache_mib"] = _disk_mib(cache)
    build["shards"] = len(list(cache.rglob("shard-*.safetensors")))
    train_cmd = cli + ["dpo"] + common + ["--steps", str(args.steps), "--batch_size", str(args.batch)]
    train_cmd += ["--lora_rank", str(args.rank), "--lr", "1e-5", "--beta", "2500", "--out", str(out)]
    trained = measured(train_cmd, work / f"split-{n}-train.log")
    report = json.loads(Path(f"{out}.report.json").read_text()) if Path(f"{out}.report.json").is_file() else {}
    trained |= {"steps": report.get("steps"), "train_seconds": report.get("train_seconds")}
    figures = {"pairs": n, "parquet_mib": _disk_mib(parquet), "cache_build": build, "train_from_cache": trained}
    figures["stand_in_encoders"] = args.stand_in
    print(f"n{n}-split{'-stand-in' if args.stand_in else ''}", json.dumps(figures), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=("bench", "worker", "standin"))
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--work", default="/tmp/mmpref-bench-dpo-scale")
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epoch-pairs", type=int, default=0, help="one-epoch cold vs warm runs at this N")
    parser.add_argument("--split", action="store_true", help="mmpref dpo-cache, then mmpref dpo, separate processes")
    parser.add_argument("--stand-in", action="store_true", help="--split with random-tensor encoders (see above)")
    parser.add_argument("--encode-batch", type=int, default=8, help="pairs per VAE/text call while caching (--split)")
    parser.add_argument("--parquet")
    parser.add_argument("--cache-dir")
    parser.add_argument("--report")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args)
        return
    if args.mode == "standin":
        standin_build(args)
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
        if args.split:
            results[f"{n}-split{'-stand-in' if args.stand_in else ''}"] = run_split(n, parquet, args)
            continue
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
    name = "results-split.json" if args.split else "results.json"
    if args.split and (work / name).is_file():  # sizes run one call at a time add up in one file
        results = json.loads((work / name).read_text()) | results
    (work / name).write_text(json.dumps(results, indent=2))
    print(f"wrote {work / name}")


if __name__ == "__main__":
    main()
