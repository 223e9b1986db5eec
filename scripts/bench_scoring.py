"""Benchmark personal scoring: images/s cold (encoder) and warm (embedding cache), and enrollment latency.

Writes JSON + markdown (machine noted) and prints the table. Targets: >= 200 images/s warm on CPU, enrollment
<= 1 s. Uses a personal taste model trained on the shipped demo set (a few seconds) and demo images written to a
temporary folder; the encoder is the real EfficientNet-Lite0.

    .venv/bin/python scripts/bench_scoring.py [--images 128] [--out-dir runs/bench_scoring]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mmpref.data.io import atomic_write
from mmpref.vision.demo_data import make_demo_image
from mmpref.vision.taste.evaluate import train_personal_model
from mmpref.vision.taste.model import CodePrior, enroll, save_taste_model
from mmpref.vision.taste.scoring import TasteScorer
from mmpref.vision.taste.system import DemoTasteDataModule

TARGET_WARM_IMAGES_PER_S = 200.0
TARGET_ENROLL_S = 1.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_scoring"))
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    data = DemoTasteDataModule()
    model = train_personal_model(data, epochs=10)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_taste_model(model, CodePrior.from_model(model), "efficientnet-lite0-imagenet", tmp / "model")
        paths = []
        for index in range(args.images):
            name, image = make_demo_image(index)
            paths.append(tmp / "images" / f"{name}.png")
            paths[-1].parent.mkdir(exist_ok=True)
            image.save(paths[-1])
        scorer = TasteScorer(model_dir)
        scorer.encoder  # build the encoder outside the timed region: model loading is not per-image work  # noqa: B018
        start = time.perf_counter()
        scorer.score(paths)
        cold = time.perf_counter() - start
        warm_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            scorer.score(paths)
            warm_times.append(time.perf_counter() - start)
        warm = float(np.median(warm_times))

    prior = CodePrior.from_model(model)
    enroll_rows = []
    for n in (4, 8, 64):
        user = data.heldout[0]
        emb_a, emb_b = data.embeddings[user.enroll.a[:n]], data.embeddings[user.enroll.b[:n]]
        labels = torch.from_numpy(user.enroll.label[:n])
        times = []
        for _ in range(args.repeats * 4):
            start = time.perf_counter()
            enroll(model, prior, emb_a, emb_b, labels)
            times.append(time.perf_counter() - start)
        enroll_rows.append({"labels": n, "median_s": float(np.median(times)), "max_s": float(np.max(times))})

    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "images": args.images,
        "cold_images_per_s": args.images / cold,
        "warm_images_per_s": args.images / warm,
        "warm_vs_cold_speedup": cold / warm,
        "enrollment": enroll_rows,
        "targets": {"warm_images_per_s": TARGET_WARM_IMAGES_PER_S, "enroll_s": TARGET_ENROLL_S},
        "pass": args.images / warm >= TARGET_WARM_IMAGES_PER_S
        and all(r["max_s"] <= TARGET_ENROLL_S for r in enroll_rows),
    }
    lines = [
        "# Personal scoring benchmark",
        "",
        f"machine: {result['machine']}",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| cold scoring (EfficientNet-Lite0 + model), {args.images} images | {result['cold_images_per_s']:.1f} "
        "images/s | — |",
        f"| warm scoring (embedding cache + model) | {result['warm_images_per_s']:.0f} images/s "
        f"({result['warm_vs_cold_speedup']:.0f}× cold) | ≥ {TARGET_WARM_IMAGES_PER_S:.0f} images/s |",
    ]
    lines += [
        f"| enrollment from {r['labels']} pairs | median {1e3 * r['median_s']:.2f} ms, max "
        f"{1e3 * r['max_s']:.2f} ms | ≤ {TARGET_ENROLL_S:.0f} s |"
        for r in enroll_rows
    ]
    lines += ["", f"all targets met: {result['pass']}"]
    markdown = "\n".join(lines) + "\n"
    with atomic_write(args.out_dir / "bench_scoring.json", "w") as handle:
        json.dump(result, handle, indent=2)
    with atomic_write(args.out_dir / "bench_scoring.md", "w") as handle:
        handle.write(markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
