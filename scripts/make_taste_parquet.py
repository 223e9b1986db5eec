"""Write the content-taste population as a user would have it: Pick-a-Pic-style Parquet files with ``user_id``.

``train.parquet``: 40 training raters x 170 pairs; ``heldout.parquet``: 24 raters of another family x 120 pairs (the
first 8 of each rater enroll, the rest test; a ``p_true`` column gives the noise ceiling); ``photos/``: 24 images to
score. Images are the demo photo variants (JPEG bytes inside the Parquet).

Usage: ``.venv/bin/python scripts/make_taste_parquet.py --out runs/taste_files [--seed 0]``
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmpref.vision.demo_data import load_demo_items, make_demo_image  # noqa: E402
from mmpref.vision.taste.population import ContentTastePopulation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/taste_files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="gaussian", choices=("gaussian", "sparse"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = load_demo_items()
    pop = ContentTastePopulation(items, num_val=0, test_family=args.family, seed=args.seed, scale=1.2)
    images: dict[int, bytes] = {}

    def png(index: int) -> bytes:
        if index not in images:
            buffer = io.BytesIO()
            make_demo_image(index, items.seed)[1].save(buffer, format="JPEG", quality=90)
            images[index] = buffer.getvalue()
        return images[index]

    def frame(raters, prefix: str, n: int) -> pd.DataFrame:
        rows = []
        for u in range(len(raters.beta)):
            pairs = pop.pairs(raters, u, n)
            for k in range(n):
                a, b = int(pairs.a[k]), int(pairs.b[k])
                rows.append(
                    {
                        "ranking_id": f"{prefix}{u:02d}-{k:03d}",
                        "caption": "",
                        "jpg_0": png(a),
                        "jpg_1": png(b),
                        "label_0": float(pairs.label[k]),
                        "user_id": f"{prefix}{u:02d}",
                        "p_true": float(pairs.true_prob[k]),
                    }
                )
        return pd.DataFrame(rows)

    frame(pop.train, "rater", 170).to_parquet(out / "train.parquet")
    frame(pop.test, "new", 120).to_parquet(out / "heldout.parquet")
    photos = out / "photos"
    photos.mkdir(exist_ok=True)
    for index in np.random.default_rng(args.seed).choice(len(items.names), 24, replace=False):
        name, image = make_demo_image(int(index), items.seed)
        image.save(photos / f"{name}.png")
    print(f"wrote {out}/train.parquet ({len(images)} images), {out}/heldout.parquet, {out}/photos/")


if __name__ == "__main__":
    main()
