"""Property-based bad input for the record readers that take media paths (JSONL manifests, ratings tables).

Whatever the bytes or the JSON values, a reader either returns records whose every path is a checked file inside
the media root, or raises :class:`DataError` naming the file: never another exception, never a path outside.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from _media_cases import png_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmpref.data import DataError, PreferenceList, PreferencePair, Rating, read_jsonl_manifest, read_ratings_table

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATHS = st.sampled_from(
    ["a.png", "b.png", "./a.png", "sub/../b.png", "../outside.png", "/etc/passwd", "../../../../etc/hostname",
     "link-out.png", "notes.png", "missing.png", "", ".", "sub", "a.png\x00", "A.PNG", "b.png/"]
)  # fmt: skip
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    PATHS,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
FIELDS = ["type", "id", "a", "b", "label", "items", "scores", "item", "rating", "scale", "prompt", "user_id", "meta"]
RECORDS = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(JSON_VALUES, PATHS, st.lists(PATHS, max_size=4), st.sampled_from(["pair", "list", "rating"])),
    max_size=8,
)


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    """A fresh folder: root/ (manifest, two images, a non-image, a link out), outside.png beside root/."""
    base = Path(tempfile.mkdtemp(prefix="mmpref-prop-"))
    try:
        yield _fill(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fill(base: Path) -> Path:
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes(colour=(250, 0, 0)))
    (root / "b.png").write_bytes(png_bytes(colour=(0, 0, 250)))
    (root / "notes.png").write_text("text, not an image")
    (base / "outside.png").write_bytes(png_bytes())
    (root / "link-out.png").symlink_to(base / "outside.png")
    return root


def _paths_of(record) -> list:
    if isinstance(record, PreferencePair):
        return [record.a, record.b]
    if isinstance(record, PreferenceList):
        return list(record.items)
    assert isinstance(record, Rating)
    return [record.item]


def _assert_contained(records, root: Path) -> None:
    for record in records:
        for item in _paths_of(record):
            if isinstance(item, str):
                path = Path(item)
                assert path.resolve().is_relative_to(root.resolve()) and path.is_file(), item
                assert path.name in ("a.png", "b.png"), item  # only the two real images get through


@SETTINGS
@given(lines=st.lists(st.one_of(RECORDS, JSON_VALUES), min_size=1, max_size=4))
def test_jsonl_manifest_returns_checked_records_or_one_data_error(lines):
    with _folder() as root:
        manifest = root / "m.jsonl"
        manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        try:
            records = read_jsonl_manifest(manifest)
        except DataError as err:
            assert str(manifest) in str(err) and err.problems
            return
        _assert_contained(records, root)


@SETTINGS
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b'{"type": "pair", "a": "a.png", ']))
def test_jsonl_manifest_survives_arbitrary_bytes(data, prefix):
    with _folder() as root:
        manifest = root / "m.jsonl"
        manifest.write_bytes(prefix + data)
        try:
            records = read_jsonl_manifest(manifest)
        except DataError as err:
            assert str(manifest) in str(err)
            return
        _assert_contained(records, root)


@SETTINGS
@given(
    rows=st.lists(
        st.fixed_dictionaries({"image": st.one_of(PATHS, JSON_SCALARS), "user": JSON_SCALARS, "rating": JSON_SCALARS}),
        min_size=1,
        max_size=4,
    )
)
def test_ratings_table_returns_checked_records_or_one_data_error(rows):
    with _folder() as root:
        table = root / "r.csv"
        pd.DataFrame(rows).to_csv(table, index=False)
        try:
            records = read_ratings_table(table)
        except DataError as err:
            assert str(table) in str(err)
            return
        _assert_contained(records, root)


def _column(kind: str, n: int):
    if kind == "paths":
        return st.lists(PATHS, min_size=n, max_size=n)
    if kind == "bytes":
        return st.lists(st.one_of(st.binary(max_size=40), st.just(png_bytes())), min_size=n, max_size=n)
    if kind == "numbers":
        return st.lists(st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, 0.5, 1.0])), min_size=n, max_size=n)
    return st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=n, max_size=n)


@st.composite
def _pickapic_frames(draw):
    n = draw(st.integers(1, 3))
    kinds = {
        "caption": "text",
        "jpg_0": draw(st.sampled_from(["paths", "bytes", "text"])),
        "jpg_1": draw(st.sampled_from(["paths", "bytes"])),
        "label_0": draw(st.sampled_from(["numbers", "text"])),
    }
    if draw(st.booleans()):
        kinds["label_1"] = draw(st.sampled_from(["numbers", "text"]))
    return pd.DataFrame({column: draw(_column(kind, n)) for column, kind in kinds.items()})


@SETTINGS
@given(frame=_pickapic_frames(), ties=st.sampled_from(["keep", "drop"]))
def test_pickapic_parquet_returns_checked_pairs_or_one_data_error(frame, ties):
    from mmpref.data import read_pickapic_parquet

    with _folder() as root:
        table = root / "p.parquet"
        try:
            frame.to_parquet(table)
        except Exception:  # a column pyarrow cannot store: not a file a user could have
            return
        try:
            records = read_pickapic_parquet(table, ties=ties)
        except DataError as err:
            assert str(table) in str(err)
            return
        _assert_contained(records, root)
