"""JSONL manifests: one preference record per line, media paths checked and contained (see :mod:`mmpref.data.io`).

Lines (relative paths resolve against the manifest's folder)::

    {"type": "pair", "id": "p1", "a": "img/1.png", "b": "img/2.png", "label": 1.0, "prompt": "a cat"}
    {"type": "list", "id": "l1", "items": ["x.png", "y.png", "z.png"], "scores": [3, 1, 2]}
    {"type": "rating", "id": "r1", "item": "x.png", "rating": 4, "scale": [1, 5], "user_id": "u7"}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mmpref.data.io import _ADD_RECORDS, DataError, MediaRoot, Record, _MediaChecker, _roots, atomic_write
from mmpref.data.records import PreferenceList, PreferencePair, Rating, RecordError


def _resolve_item(value: Any, where: str, field: str, problems: list[str], media: _MediaChecker) -> Any:
    """Turn a manifest item into a record item: an inline feature vector, or a media path resolved and checked."""
    if isinstance(value, list):  # an inline feature vector
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            problems.append(f"{where}: field '{field}' must be a path or a flat list of numbers")
            return value
        if array.ndim != 1 or not np.isfinite(array).all():
            problems.append(
                f"{where}: field '{field}' must be a flat list of finite numbers (no NaN, inf or nesting); "
                "clean it or drop the row"
            )
        return array
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: field '{field}' must be a path or a list of numbers, got {value!r}")
        return value
    return media(value, f"{where}: field '{field}'", problems)


def _number(obj: dict[str, Any], key: str) -> Any:
    """A JSON number field (``true``/``false`` and strings are refused: they are not numbers)."""
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"field '{key}' must be a number, got {value!r}")
    return value


def _numbers(obj: dict[str, Any], key: str, length: int | None = None) -> tuple[float, ...]:
    value = obj[key]
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise RecordError(f"field '{key}' must be a list of numbers, got {value!r}")
    if length is not None and len(value) != length:
        raise RecordError(f"field '{key}' must hold {length} numbers, got {len(value)}")
    return tuple(value)


def _record_from_json(obj: dict[str, Any], where: str, problems: list[str], media: _MediaChecker) -> Record:
    kind = obj.get("type") or (
        "pair" if "a" in obj else "list" if "items" in obj else "rating" if "item" in obj else None
    )
    for key in ("prompt", "user_id"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise RecordError(f"field '{key}' must be a string, got {obj[key]!r}")
    common = {k: obj[k] for k in ("prompt", "user_id") if obj.get(k) is not None}
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int))):
        raise RecordError(f"field 'id' must be a string (or an integer), got {obj['id']!r}")
    common["id"] = str(obj["id"]) if "id" in obj else ""
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise RecordError(f"field 'meta' must be an object, got {meta!r}")
    if kind == "pair":
        for key in ("a", "b", "label"):
            if key not in obj:
                raise RecordError(f"field '{key}' is missing; a pair needs 'a', 'b' and 'label' (P(a preferred))")
        label = _number(obj, "label")
        a = _resolve_item(obj["a"], where, "a", problems, media)
        b = _resolve_item(obj["b"], where, "b", problems, media)
        return PreferencePair(a=a, b=b, label=label, meta=meta, **common)
    if kind == "list":
        if "items" not in obj or "scores" not in obj:
            raise RecordError("a list needs fields 'items' and 'scores' (higher = better)")
        if not isinstance(obj["items"], list):
            raise RecordError(f"field 'items' must be a list of paths or feature vectors, got {obj['items']!r}")
        scores = _numbers(obj, "scores")
        items = tuple(_resolve_item(v, where, f"items[{i}]", problems, media) for i, v in enumerate(obj["items"]))
        return PreferenceList(items=items, scores=scores, meta=meta, **common)
    if kind == "rating":
        for key in ("item", "rating"):
            if key not in obj:
                raise RecordError(f"field '{key}' is missing; a rating needs 'item' and 'rating'")
        rating = _number(obj, "rating")
        scale = _numbers(obj, "scale", 2) if "scale" in obj else (1.0, 5.0)
        item = _resolve_item(obj["item"], where, "item", problems, media)
        return Rating(item=item, rating=rating, scale=scale, meta=meta, **common)  # type: ignore[arg-type]
    raise RecordError(f"field 'type' = {obj.get('type')!r} is not one of 'pair', 'list', 'rating'")


def read_jsonl_manifest(path: str | Path, *, check_media: bool = True, media_root: MediaRoot = None) -> list[Record]:
    """Read a JSONL manifest of pairs, lists and ratings.

    Media paths resolve against the manifest's folder (unless absolute) and, after following symlinks, must lie
    inside the media root: the manifest's folder, or ``media_root``.

    Args:
        path: the manifest file, UTF-8, one JSON object per line (blank lines and lines starting with ``#`` are
            skipped).
        check_media: also decode every referenced image and probe every video (:func:`mmpref.data.media.check_media`),
            so an unreadable or non-media file is reported now, not mid-training.
        media_root: the folder (or folders) media may live in; default: the manifest's folder.

    Returns:
        The records in file order.

    Raises:
        DataError: listing every bad line (file, line number, field, fix); nothing is returned.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, ["file not found; check the path (it is read relative to the current folder)"])
    media = _MediaChecker(path.parent, _roots(media_root, path.parent), check_media)
    records: list[Record] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as err:
        raise DataError(path, [f"cannot be read ({err.strerror or err}); check its permissions"]) from None
    for line_no, raw in enumerate(raw_lines, start=1):
        where = f"line {line_no}"
        try:
            line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as err:
            problems.append(
                f"{where}: not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}); save as UTF-8"
            )
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line, parse_constant=lambda c: float(c))  # NaN/Infinity reach the checks below
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not valid JSON ({err.msg} at column {err.colno}); one object per line")
            continue
        except RecursionError:
            problems.append(f"{where}: JSON nested too deeply; one flat object per line")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
            continue
        try:
            record = _record_from_json(obj, where, problems, media)
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
    if not records:
        what = "holds no records (only blank or '#' lines)" if raw_lines else "the file is empty"
        raise DataError(path, [what + _ADD_RECORDS])
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
