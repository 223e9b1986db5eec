"""Pick-a-Pic Parquet pairs streamed in row groups, and images resized + cropped to the training resolution.

Columns are Pick-a-Pic's own: ``caption``, ``jpg_0`` / ``jpg_1`` (encoded image bytes, or Hugging Face ``Image``
structs with a ``bytes`` field), ``label_0`` (1 = image 0 preferred, 0 = image 1, 0.5 = tie) and optionally
``label_1`` (= 1 − label_0). Only these columns are read, a record batch at a time, so memory does not grow with the
file. Ties follow an explicit policy (``drop`` or ``error``: a tie has no winner to prefer).

Resizing follows the Diffusion-DPO training scripts: the shorter side is scaled to the resolution (bilinear), then a
centre or random square crop; ``refuse`` keeps the old behaviour (every image must already be R×R). For SDXL each
image also records (original height, original width, crop top, crop left), its ``time_ids`` micro-conditioning.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmpref.data.io import DataError

ResizePolicy = Literal["center", "random", "refuse"]
DPOTiePolicy = Literal["drop", "error"]
PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")


@dataclass(frozen=True)
class RawPair:
    """One pair as stored: encoded winner/loser bytes, the caption, its row, and a content key.

    ``key`` = BLAKE2b-128 of (winner bytes, loser bytes, caption): the latent cache's address, so the same pair in
    another file (or the same file re-written) hits the cache, and a flipped label does not.
    """

    row: int
    caption: str
    winner: bytes
    loser: bytes
    key: bytes


def pair_key(winner: bytes, loser: bytes, caption: str) -> bytes:
    """The 16-byte content key of a pair (length-prefixed parts, so boundaries cannot collide)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (winner, loser, caption.encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def _bytes_of(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])  # a Hugging Face datasets Image struct
    return None


def iter_pickapic(path: str | Path, ties: DPOTiePolicy, batch_rows: int = 256) -> Iterator[RawPair]:
    """Stream the pairs of a Pick-a-Pic Parquet file with a winner, in file order (a record batch at a time).

    Problems (missing columns, bad labels, missing image bytes, a tie with ``ties="error"``) are collected over the
    whole file and raised together at the end as one :class:`DataError`, after every good pair was yielded (the
    cache builder writes nothing final until the file has been read through).

    Raises:
        DataError: naming the file, the rows and the fields; or no pair left.
        ValueError: a tie policy other than ``drop``/``error``.
    """
    import pyarrow.parquet as pq

    if ties not in ("drop", "error"):
        raise ValueError(f"ties must be 'drop' or 'error' for DPO (a tie has no winner to prefer), got {ties!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(path, ["file not found; pass a Pick-a-Pic-style Parquet file"])
    try:
        # a 1 MiB read buffer and no pre-buffering: pyarrow's pool then holds one batch, not every row group read so
        # far (the default kept ~3 MiB per row group allocated: 34 MiB after a 10-row-group file)
        handle = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except Exception as err:  # pyarrow raises its own error types for a non-Parquet file
        raise DataError(path, [f"not a readable Parquet file ({err})"]) from None
    names = set(handle.schema_arrow.names)
    missing = [c for c in PICKAPIC_COLUMNS if c not in names]
    if missing:
        raise DataError(path, [f"missing column(s) {missing}; Pick-a-Pic files have {list(PICKAPIC_COLUMNS)}"])
    columns = list(PICKAPIC_COLUMNS) + (["label_1"] if "label_1" in names else [])
    problems: list[str] = []
    kept = tied = row = 0
    for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            where = f"row {row}"
            row += 1
            label = data["label_0"][i]
            if label is None or (isinstance(label, float) and math.isnan(label)) or label not in (0, 0.5, 1):
                problems.append(f"{where}: 'label_0' = {label!r}; set 1, 0 or 0.5 (tie)")
                continue
            other = data["label_1"][i] if "label_1" in data else None
            if other is not None and not math.isnan(float(other)) and abs(float(other) - (1 - float(label))) > 1e-6:
                problems.append(f"{where}: 'label_1' = {other} is not 1 − label_0 = {1 - float(label)}; fix one")
                continue
            images = [_bytes_of(data["jpg_0"][i]), _bytes_of(data["jpg_1"][i])]
            bad = [c for c, v in zip(("jpg_0", "jpg_1"), images, strict=True) if v is None]
            if bad:
                problems.extend(f"{where}: column '{c}' has no image bytes; re-encode or drop the row" for c in bad)
                continue
            if label == 0.5:
                tied += 1
                if ties == "error":
                    problems.append(f"{where}: label_0 = 0.5 is a tie; DPO needs a winner (pass ties='drop')")
                continue
            winner, loser = images if label == 1 else images[::-1]
            caption = data["caption"][i] or ""
            kept += 1
            yield RawPair(row - 1, caption, winner, loser, pair_key(winner, loser, caption))
    if problems:
        raise DataError(path, problems)
    if not kept:
        raise DataError(
            path, [f"no pair left after dropping ties ({row} row(s), {tied} tie(s)); DPO needs pairs with a winner"]
        )


def prepare_image(
    data: bytes, resolution: int, resize: ResizePolicy, rng: np.random.Generator
) -> tuple[torch.Tensor | None, tuple[int, int, int, int] | str]:
    """Decode, resize the shorter side to ``resolution`` and crop a square; pixels ``[3,R,R]`` in [−1, 1].

    Returns:
        ``(pixels, (orig_h, orig_w, crop_top, crop_left))``, or ``(None, reason)`` when the image does not decode
        or (``resize="refuse"``) is not R×R. Crop offsets are in the resized image, as SDXL's ``time_ids`` expect.
    """
    from PIL import Image

    from mmpref.data.media import MediaError, decode_image

    try:  # the one pixel limit (MMPREF_MAX_PIXELS) and decode check of mmpref.data.media
        image = decode_image(data, max_side=None)
    except MediaError as err:
        return None, f"does not decode as an image ({err.reason})"
    w, h = image.size
    if (w, h) != (resolution, resolution):
        if resize == "refuse":
            return None, (
                f"is {w}×{h}, the pipeline needs {resolution}×{resolution}; pass resize='center' or 'random' "
                "(--resize) to resize and crop, or pick the matching pipeline"
            )
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    rw, rh = image.size
    if resize == "random":
        top, left = int(rng.integers(0, rh - resolution + 1)), int(rng.integers(0, rw - resolution + 1))
    else:
        top, left = (rh - resolution) // 2, (rw - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return pixels, (h, w, top, left)
