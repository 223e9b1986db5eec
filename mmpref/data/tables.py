"""Tables: Pick-a-Pic-style Parquet pairs and ratings tables (Parquet or CSV), checked whole before returning."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmpref.data.io import DataError, MediaRoot, TiePolicy, _MediaChecker, _roots, atomic_write
from mmpref.data.media import check_image
from mmpref.data.records import PreferencePair, Rating, RecordError


def _read_table(path: Path, required: Sequence[str], kind: str, parquet_only: bool = False) -> Any:
    """Read a Parquet (or CSV) table and check its columns; a ``DataError`` names the file and the fix."""
    import pandas as pd

    if not path.is_file():
        raise DataError(path, ["file not found; check the path"])
    formats = "Parquet" if parquet_only else "CSV or Parquet"
    if path.stat().st_size == 0:
        raise DataError(path, [f"the file is empty (0 bytes); {kind} needs a {formats} table with {list(required)}"])
    try:
        csv = not parquet_only and path.suffix.lower() == ".csv"
        frame = pd.read_csv(path) if csv else pd.read_parquet(path)
    except Exception as err:  # pandas/pyarrow raise several types for a corrupt file
        raise DataError(path, [f"not a readable {formats} file ({err.__class__.__name__}: {err})"]) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            path,
            [
                f"missing column(s) {missing}; found {list(frame.columns)}; {kind} needs "
                f"{list(required)} (rename columns to match)"
            ],
        )
    if len(frame) == 0:
        raise DataError(path, [f"the table has its columns but no rows; {kind} needs at least one row"])
    return frame


PICKAPIC_REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0")


def read_pickapic_parquet(
    path: str | Path,
    *,
    ties: TiePolicy,
    check_images: bool = True,
    image_root: str | Path | None = None,
    media_root: MediaRoot = None,
) -> list[PreferencePair]:
    """Read Pick-a-Pic-style preference pairs from Parquet.

    Columns: ``caption`` (str), ``jpg_0`` and ``jpg_1`` (encoded image bytes, or paths), ``label_0`` (1 = image 0
    preferred, 0 = image 1, 0.5 = tie); optional ``label_1`` (must equal 1 − label_0), ``user_id``, and a
    ``ranking_id`` / ``id`` column used as the record id (else ``"row<i>"``).

    Args:
        path: the Parquet file.
        ties: what to do with label 0.5, stated explicitly: ``"keep"`` (soft label 0.5) or ``"drop"`` (the
            Diffusion-DPO recipe drops them).
        check_images: decode every image now, so a broken one is reported with its row.
        image_root: folder that relative image paths resolve against (default: the Parquet file's folder).
        media_root: folder(s) image paths must resolve into, after symlinks (default: ``image_root``).

    Returns:
        The pairs, with ``a`` = jpg_0, ``b`` = jpg_1 and ``label`` = label_0.

    Raises:
        DataError: naming every bad row and field, or the missing columns; nothing is returned.
    """
    if ties not in ("keep", "drop"):
        raise ValueError(f"ties must be 'keep' or 'drop', got {ties!r}")
    path = Path(path)
    frame = _read_table(path, PICKAPIC_REQUIRED, "a Pick-a-Pic-style file", parquet_only=True)
    root = Path(image_root) if image_root is not None else path.parent
    media = _MediaChecker(root, _roots(media_root, root), check_images, images_only=True)
    id_column = next((c for c in ("ranking_id", "id") if c in frame.columns), None)
    problems: list[str] = []
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    for row_index, row in enumerate(frame.itertuples(index=False)):
        where = f"row {row_index}"
        values = row._asdict()
        label = values["label_0"]
        if label is None or (isinstance(label, float) and math.isnan(label)):
            problems.append(f"{where}: 'label_0' is missing or NaN; set 1, 0 or 0.5 (tie), or drop the row")
            continue
        if (
            "label_1" in values
            and values["label_1"] is not None
            and not (isinstance(values["label_1"], float) and math.isnan(values["label_1"]))
        ):
            try:
                mismatch = abs(float(values["label_1"]) - (1.0 - float(label))) > 1e-6
            except (TypeError, ValueError):
                problems.append(
                    f"{where}: 'label_0' and 'label_1' must be numbers, got {label!r}, {values['label_1']!r}"
                )
                continue
            if mismatch:
                problems.append(
                    f"{where}: 'label_1' = {values['label_1']} is not 1 − label_0 = {1 - float(label)}; "
                    "fix one of them"
                )
                continue
        items = []
        for column in ("jpg_0", "jpg_1"):
            value = values[column]
            if isinstance(value, (bytes, bytearray)):
                value = bytes(value)
                reason = check_image(value) if check_images else None
                if reason:
                    problems.append(f"{where}: column '{column}' is {reason}; re-encode or drop the row")
            elif isinstance(value, str) and value:
                value = media(value, f"{where}: column '{column}'", problems)
            else:
                problems.append(
                    f"{where}: column '{column}' must hold image bytes or a path, got {type(value).__name__}"
                )
            items.append(value)
        record_id = str(values[id_column]) if id_column else f"row{row_index}"
        if record_id in seen:
            problems.append(
                f"{where}: duplicate id {record_id!r} in column '{id_column}' (first at row "
                f"{seen[record_id]}); ids must be unique"
            )
            continue
        seen[record_id] = row_index
        user = values.get("user_id")
        caption = values["caption"]
        try:
            pair = PreferencePair(
                id=record_id,
                a=items[0],
                b=items[1],
                label=label,
                prompt=None
                if caption is None or (isinstance(caption, float) and math.isnan(caption))
                else str(caption),
                user_id=None if user is None or (isinstance(user, float) and math.isnan(user)) else str(user),
            )
        except RecordError as err:
            problems.append(f"{where}: {err}".replace("field 'label'", "column 'label_0'"))
            continue
        if pair.is_tie and ties == "drop":
            continue
        pairs.append(pair)
    if problems:
        raise DataError(path, problems)
    if not pairs:
        raise DataError(path, [f"all {len(frame)} row(s) are ties (label_0 = 0.5) and ties='drop'; nothing is left"])
    return pairs


def write_pickapic_parquet(pairs: Iterable[PreferencePair], path: str | Path) -> Path:
    """Write pairs in the Pick-a-Pic layout (``jpg_0``/``jpg_1`` as bytes or paths), atomically."""
    import pandas as pd

    rows, problems, seen = [], [], set()
    for index, pair in enumerate(pairs):
        if pair.id in seen:
            problems.append(f"record {index}: duplicate id {pair.id!r}; ids must be unique")
        seen.add(pair.id)
        if isinstance(pair.a, np.ndarray) or isinstance(pair.b, np.ndarray):
            problems.append(f"record {index} ({pair.id!r}): feature vectors cannot go in jpg_0/jpg_1; write JSONL")
        rows.append(
            {
                "ranking_id": pair.id,
                "caption": pair.prompt or "",
                "jpg_0": pair.a,
                "jpg_1": pair.b,
                "label_0": pair.label,
                "label_1": 1.0 - pair.label,
                "user_id": pair.user_id,
            }
        )
    if problems:
        raise DataError(path, problems)
    frame = pd.DataFrame(rows, columns=["ranking_id", "caption", "jpg_0", "jpg_1", "label_0", "label_1", "user_id"])
    with atomic_write(path, "wb") as handle:
        frame.to_parquet(handle, index=False)
    return Path(path)


RATINGS_REQUIRED = ("image", "user", "rating")


def read_ratings_table(
    path: str | Path,
    *,
    scale: tuple[float, float] = (1.0, 5.0),
    check_images: bool = True,
    image_root: str | Path | None = None,
    media_root: MediaRoot = None,
) -> list[Rating]:
    """Read a ratings table (CSV or Parquet) with columns ``image``, ``user``, ``rating`` [, ``prompt``, ``id``].

    Args:
        path: ``.csv`` or ``.parquet`` file.
        scale: (low, high) of the rating scale; ratings outside it are errors, not clipped.
        check_images: decode every referenced image now.
        image_root: folder relative image paths resolve against (default: the table's folder).
        media_root: folder(s) image paths must resolve into, after symlinks (default: ``image_root``).

    Returns:
        One :class:`Rating` per row, with ``user_id`` set.

    Raises:
        DataError: naming every bad row and column, or the missing columns; nothing is returned.
    """
    path = Path(path)
    frame = _read_table(path, RATINGS_REQUIRED, "a ratings table")
    root = Path(image_root) if image_root is not None else path.parent
    media = _MediaChecker(root, _roots(media_root, root), check_images, images_only=True)
    problems: list[str] = []
    ratings: list[Rating] = []
    seen: dict[str, int] = {}
    for row_index, row in enumerate(frame.to_dict("records")):
        where = f"row {row_index}"
        image = row["image"]
        if not isinstance(image, str) or not image:
            problems.append(f"{where}: column 'image' must be a path, got {image!r}")
            continue
        full = media(image, f"{where}: column 'image'", problems)
        record_id = str(row["id"]) if "id" in row and row["id"] is not None else f"row{row_index}"
        if record_id in seen:
            problems.append(f"{where}: duplicate id {record_id!r} (first at row {seen[record_id]})")
            continue
        seen[record_id] = row_index
        user = row["user"]
        if user is None or (isinstance(user, float) and math.isnan(user)) or user == "":
            problems.append(f"{where}: column 'user' is empty; every rating needs the id of the user who gave it")
            continue
        prompt = row.get("prompt")
        try:
            ratings.append(
                Rating(
                    id=record_id,
                    item=str(full),
                    rating=row["rating"],
                    scale=scale,
                    user_id=str(row["user"]),
                    prompt=None
                    if prompt is None or (isinstance(prompt, float) and math.isnan(prompt))
                    else str(prompt),
                )
            )
        except RecordError as err:
            problems.append(f"{where}: {err}".replace("field 'rating'", "column 'rating'"))
    if problems:
        raise DataError(path, problems)
    return ratings
