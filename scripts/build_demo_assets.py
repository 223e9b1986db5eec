"""Build the default personal-scoring set: demo images → EfficientNet-Lite0 embeddings + measured properties.

Writes ``assets/demo_taste/items.npz`` (embeddings as float16, properties, names, seed) and, with
``--images-out DIR``, the images themselves as PNG. Deterministic: the same seed gives the same images, and the
embeddings match up to float16 rounding (checked by tests/vision/test_demo_data.py).

    .venv/bin/python scripts/build_demo_assets.py                 # ~30 s on 2 CPU cores
    .venv/bin/python scripts/build_demo_assets.py --images-out runs/demo_taste/images
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmpref.data.io import atomic_write
from mmpref.vision.demo_data import ANIMAL_CLASSES, assets_dir, make_demo_image, measure_properties
from mmpref.vision.encoders import EfficientNetLite0Encoder


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=480, help="number of demo images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=assets_dir() / "demo_taste" / "items.npz")
    parser.add_argument("--images-out", type=Path, default=None, help="also write the images here as PNG")
    args = parser.parse_args(argv)

    encoder = EfficientNetLite0Encoder()
    names, embeddings, properties = [], [], []
    for start in tqdm(range(0, args.count, 32), desc="demo images", unit="batch"):
        batch = [make_demo_image(i, args.seed) for i in range(start, min(start + 32, args.count))]
        images = [image for _, image in batch]
        features, probs = encoder.embed_and_classify(images)
        for (name, image), prob in zip(batch, probs, strict=True):
            names.append(name)
            properties.append(np.append(measure_properties(image), prob[ANIMAL_CLASSES].sum()))
            if args.images_out is not None:
                args.images_out.mkdir(parents=True, exist_ok=True)
                image.save(args.images_out / f"{name}.png")
        embeddings.append(features)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        names=np.array(names),
        embeddings=np.concatenate(embeddings).astype(np.float16),
        properties=np.array(properties, np.float32),
        seed=np.array(args.seed),
    )
    with atomic_write(args.out, "wb") as handle:
        handle.write(buffer.getvalue())
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {len(names)} images)")
    return args.out


if __name__ == "__main__":
    main()
