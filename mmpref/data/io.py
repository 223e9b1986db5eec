"""Readers and writers for preference data: JSONL manifests and Pick-a-Pic-style Parquet.

Readers check everything before returning anything, and raise one :class:`DataError` naming the file, the row
(1-based line for JSONL, 0-based row index for Parquet, as pandas shows it), the field and the fix; several
problems are listed together (up to 20). Writers validate first and write atomically (a temporary file in the
same folder, then ``os.replace``), so a failed write leaves the old file untouched.

JSONL manifest lines (relative paths resolve against the manifest's folder)::

    {"type": "pair", "id": "p1", "a": "img/1.png", "b": "img/2.png", "label": 1.0, "prompt": "a cat"}
    {"type": "list", "id": "l1", "items": ["x.png", "y.png", "z.png"], "scores": [3, 1, 2]}
    {"type": "rating", "id": "r1", "item": "x.png", "rating": 4, "scale": [1, 5], "user_id": "u7"}
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmpref.data.records import PreferenceList, PreferencePair, Rating, RecordError

Record = PreferencePair | PreferenceList | Rating
TiePolicy = Literal["keep", "drop"]
_MAX_LISTED = 20


class DataError(ValueError):
    """Bad input data: the message names the file, the rows, the fields and how to fix them."""

    def __init__(self, path: str | Path, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:_MAX_LISTED])
        more = len(self.problems) - _MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{self.path}: {len(self.problems)} problem(s), nothing was loaded:\n{shown}{tail}")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path`` and move it over ``path`` only when the block succeeds.

    The data is flushed and fsynced before the rename, so a crash leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only when the block succeeds.

    A failure leaves ``path`` as it was (the temporary folder is removed); an existing ``path`` is swapped out by two
    renames, so a reader sees the old folder or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_image(data: bytes | Path) -> str | None:
    """Return ``None`` if ``data`` (bytes or a path) decodes as an image, else the reason it does not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()  # verify() misses truncated files; a full decode does not
    except FileNotFoundError:
        return "missing (file not found)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"not a readable image ({err.__class__.__name__}: {err})"
    return None


_MEDIA_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _resolve_item(value: Any, root: Path, where: str, field: str, problems: list[str], check_media: bool) -> Any:
    """Turn a manifest item into a record item: paths resolved against ``root`` and checked."""
    if isinstance(value, list):  # an inline feature vector
        array = np.asarray(value, dtype=np.float32)
        if not np.isfinite(array).all():
            problems.append(f"{where}: field '{field}' holds NaN or inf features; clean them or drop the row")
        return array
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: field '{field}' must be a path or a list of numbers, got {value!r}")
        return value
    path = Path(value) if os.path.isabs(value) else root / value
    if not path.exists():
        problems.append(
            f"{where}: field '{field}': file {str(path)!r} not found; fix the path (relative paths "
            f"resolve against {str(root)!r})"
        )
    elif check_media and path.suffix.lower() in _MEDIA_SUFFIXES:
        reason = check_image(path)
        if reason:
            problems.append(f"{where}: field '{field}': {str(path)!r} is {reason}; replace or remove the file")
    return str(path)


def _record_from_json(obj: dict[str, Any], root: Path, where: str, problems: list[str], check_media: bool) -> Record:
    kind = obj.get("type") or (
        "pair" if "a" in obj else "list" if "items" in obj else "rating" if "item" in obj else None
    )
    common = {k: obj[k] for k in ("prompt", "user_id") if obj.get(k) is not None}
    common["id"] = str(obj["id"]) if "id" in obj else ""
    meta = obj.get("meta", {})
    if kind == "pair":
        for key in ("a", "b", "label"):
            if key not in obj:
                raise RecordError(f"field '{key}' is missing; a pair needs 'a', 'b' and 'label' (P(a preferred))")
        a = _resolve_item(obj["a"], root, where, "a", problems, check_media)
        b = _resolve_item(obj["b"], root, where, "b", problems, check_media)
        return PreferencePair(a=a, b=b, label=obj["label"], meta=meta, **common)
    if kind == "list":
        if "items" not in obj or "scores" not in obj:
            raise RecordError("a list needs fields 'items' and 'scores' (higher = better)")
        items = tuple(
            _resolve_item(v, root, where, f"items[{i}]", problems, check_media) for i, v in enumerate(obj["items"])
        )
        return PreferenceList(items=items, scores=tuple(obj["scores"]), meta=meta, **common)
    if kind == "rating":
        for key in ("item", "rating"):
            if key not in obj:
                raise RecordError(f"field '{key}' is missing; a rating needs 'item' and 'rating'")
        item = _resolve_item(obj["item"], root, where, "item", problems, check_media)
        scale = tuple(obj.get("scale", (1.0, 5.0)))
        return Rating(item=item, rating=obj["rating"], scale=scale, meta=meta, **common)  # type: ignore[arg-type]
    raise RecordError(f"field 'type' = {obj.get('type')!r} is not one of 'pair', 'list', 'rating'")


def read_jsonl_manifest(path: str | Path, *, check_media: bool = True) -> list[Record]:
    """Read a JSONL manifest of pairs, lists and ratings.

    Args:
        path: the manifest file, one JSON object per line (blank lines and lines starting with ``#`` are skipped).
        check_media: also decode every referenced image, so an unreadable one is reported now, not mid-training.

    Returns:
        The records in file order.

    Raises:
        DataError: listing every bad line (file, line number, field, fix); nothing is returned.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, ["file not found; check the path (it is read relative to the current folder)"])
    root = path.parent
    records: list[Record] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"line {line_no}"
            try:
                obj = json.loads(line, parse_constant=lambda c: float(c))  # NaN/Infinity reach the checks below
            except json.JSONDecodeError as err:
                problems.append(f"{where}: not valid JSON ({err.msg} at column {err.colno}); one object per line")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            try:
                record = _record_from_json(obj, root, where, problems, check_media)
            except RecordError as err:
                problems.append(f"{where}: {err}")
                continue
            if record.id in seen:
                problems.append(
                    f"{where}: duplicate id {record.id!r} (first on line {seen[record.id]}); ids must be unique"
                )
            seen.setdefault(record.id, line_no)
            records.append(record)
    if problems:
        raise DataError(path, problems)
    return records


def _item_to_json(item: Any) -> Any:
    if isinstance(item, np.ndarray):
        return item.tolist()
    if isinstance(item, bytes):
        raise RecordError("a JSONL manifest stores paths or features, not image bytes; write Parquet instead")
    return item


def _record_to_json(record: Record) -> dict[str, Any]:
    out: dict[str, Any]
    if isinstance(record, PreferencePair):
        out = {
            "type": "pair",
            "id": record.id,
            "a": _item_to_json(record.a),
            "b": _item_to_json(record.b),
            "label": record.label,
        }
    elif isinstance(record, PreferenceList):
        out = {
            "type": "list",
            "id": record.id,
            "items": [_item_to_json(i) for i in record.items],
            "scores": list(record.scores),
        }
    elif isinstance(record, Rating):
        out = {
            "type": "rating",
            "id": record.id,
            "item": _item_to_json(record.item),
            "rating": record.rating,
            "scale": list(record.scale),
        }
    else:
        raise RecordError(f"cannot write a {type(record).__name__} to a JSONL manifest")
    for key in ("prompt", "user_id"):
        if getattr(record, key) is not None:
            out[key] = getattr(record, key)
    if record.meta:
        out["meta"] = record.meta
    return out


def write_jsonl_manifest(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as a JSONL manifest, atomically; ids must be unique. Paths are written as given."""
    records = list(records)
    lines, problems, seen = [], [], set()
    for index, record in enumerate(records):
        if record.id in seen:
            problems.append(f"record {index}: duplicate id {record.id!r}; ids must be unique")
        seen.add(record.id)
        try:
            lines.append(json.dumps(_record_to_json(record), allow_nan=False))
        except (RecordError, ValueError, TypeError) as err:
            problems.append(f"record {index} ({record.id!r}): {err}")
    if problems:
        raise DataError(path, problems)
    with atomic_write(path, "w") as handle:
        handle.write("\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def _read_table(path: Path, required: Sequence[str], kind: str, parquet_only: bool = False) -> Any:
    """Read a Parquet (or CSV) table and check its columns; a ``DataError`` names the file and the fix."""
    import pandas as pd

    if not path.is_file():
        raise DataError(path, ["file not found; check the path"])
    try:
        csv = not parquet_only and path.suffix.lower() == ".csv"
        frame = pd.read_csv(path) if csv else pd.read_parquet(path)
    except Exception as err:  # pandas/pyarrow raise several types for a corrupt file
        formats = "Parquet" if parquet_only else "CSV or Parquet"
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
    return frame


PICKAPIC_REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0")


def read_pickapic_parquet(
    path: str | Path,
    *,
    ties: TiePolicy,
    check_images: bool = True,
    image_root: str | Path | None = None,
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
            if abs(float(values["label_1"]) - (1.0 - float(label))) > 1e-6:
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
                full = Path(value) if os.path.isabs(value) else root / value
                reason = check_image(full) if check_images else (None if full.exists() else "missing (file not found)")
                if reason:
                    problems.append(f"{where}: column '{column}': {str(full)!r} is {reason}; fix the path or file")
                value = str(full)
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
        try:
            pair = PreferencePair(
                id=record_id,
                a=items[0],
                b=items[1],
                label=label,
                prompt=str(values["caption"]),
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
) -> list[Rating]:
    """Read a ratings table (CSV or Parquet) with columns ``image``, ``user``, ``rating`` [, ``prompt``, ``id``].

    Args:
        path: ``.csv`` or ``.parquet`` file.
        scale: (low, high) of the rating scale; ratings outside it are errors, not clipped.
        check_images: decode every referenced image now.
        image_root: folder relative image paths resolve against (default: the table's folder).

    Returns:
        One :class:`Rating` per row, with ``user_id`` set.

    Raises:
        DataError: naming every bad row and column, or the missing columns; nothing is returned.
    """
    path = Path(path)
    frame = _read_table(path, RATINGS_REQUIRED, "a ratings table")
    root = Path(image_root) if image_root is not None else path.parent
    problems: list[str] = []
    ratings: list[Rating] = []
    seen: dict[str, int] = {}
    for row_index, row in enumerate(frame.to_dict("records")):
        where = f"row {row_index}"
        image = row["image"]
        if not isinstance(image, str) or not image:
            problems.append(f"{where}: column 'image' must be a path, got {image!r}")
            continue
        full = Path(image) if os.path.isabs(image) else root / image
        reason = check_image(full) if check_images else (None if full.exists() else "missing (file not found)")
        if reason:
            problems.append(f"{where}: column 'image': {str(full)!r} is {reason}; fix the path or file")
        record_id = str(row["id"]) if "id" in row and row["id"] is not None else f"row{row_index}"
        if record_id in seen:
            problems.append(f"{where}: duplicate id {record_id!r} (first at row {seen[record_id]})")
            continue
        seen[record_id] = row_index
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
