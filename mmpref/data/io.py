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

from mmpref.data.media import MediaError, check_image, max_pixels, resolve_media_path
from mmpref.data.media import check_media as _check_media_file
from mmpref.data.records import PreferenceList, PreferencePair, Rating, RecordError
from mmpref.errors import MmprefError

Record = PreferencePair | PreferenceList | Rating
TiePolicy = Literal["keep", "drop"]
_MAX_LISTED = 20
_ADD_RECORDS = '; add one JSON object per line, e.g. {"type": "pair", "a": "1.png", "b": "2.png", "label": 1}'


class DataError(MmprefError):
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


MediaRoot = str | Path | Sequence[str | Path] | None


def _roots(media_root: MediaRoot, default: Path) -> list[Path]:
    """The folders media may resolve into: ``media_root`` (one or several) if given, else ``default``."""
    if media_root is None:
        return [default]
    if isinstance(media_root, (str, Path)):
        return [Path(media_root)]
    return [Path(r) for r in media_root]


class _MediaChecker:
    """Resolves and checks media paths for one file being read; each distinct file is checked once."""

    def __init__(self, base: Path, roots: list[Path], check: bool, images_only: bool = False):
        self.base, self.roots, self.check, self.images_only = base, roots, check, images_only
        self.seen: dict[Path, str | None] = {}
        if check:
            max_pixels()  # a bad MMPREF_MAX_PIXELS is one MediaError now, not one problem per file

    def __call__(self, value: str, where: str, problems: list[str]) -> str:
        """The resolved path (as text); a problem (containment, missing, not media) is appended to ``problems``."""
        try:
            path = resolve_media_path(value, self.base, self.roots)
        except MediaError as err:
            problems.append(f"{where} = {value!r}: {err.reason}")
            return value
        if path not in self.seen:
            self.seen[path] = self._problem(path)
        if self.seen[path]:
            problems.append(f"{where}: file {str(path)!r} is {self.seen[path]}")
        return str(path)

    def _problem(self, path: Path) -> str | None:
        try:
            exists = path.exists()
        except OSError as err:  # e.g. a name longer than the file system allows
            return f"an unusable path ({err.strerror or err}); fix the path"
        if not exists:
            return f"missing (file not found); fix the path (relative paths resolve against {str(self.base)!r})"
        if not self.check:
            return None
        try:
            kind = _check_media_file(path).kind
        except MediaError as err:
            return err.reason
        if self.images_only and kind != "image":
            return f"a {kind}, not an image; this column holds images"
        return None


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
