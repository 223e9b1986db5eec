from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmpref.data import (
    DataError,
    PreferenceList,
    PreferencePair,
    Rating,
    read_jsonl_manifest,
    read_pickapic_parquet,
    write_jsonl_manifest,
    write_pickapic_parquet,
)


def _png(color=(255, 0, 0), size=(4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_dir(tmp_path):
    for name, color in (("x.png", (255, 0, 0)), ("y.png", (0, 255, 0)), ("z.png", (0, 0, 255))):
        (tmp_path / name).write_bytes(_png(color))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path


def _write_lines(path, objs):
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


def test_manifest_roundtrip(image_dir):
    manifest = _write_lines(
        image_dir / "m.jsonl",
        [
            {"type": "pair", "id": "p1", "a": "x.png", "b": "y.png", "label": 1, "prompt": "red"},
            {"type": "pair", "id": "p2", "a": "x.png", "b": "z.png", "label": 0.5, "user_id": "u1"},
            {"type": "list", "id": "l1", "items": ["x.png", "y.png", "z.png"], "scores": [3, 1, 2]},
            {"type": "rating", "id": "r1", "item": "y.png", "rating": 4, "scale": [1, 5]},
            "# a comment",
            {"id": "f1", "a": [0.1, 0.2], "b": [0.3, 0.4], "label": 0.0},
        ],
    )
    records = read_jsonl_manifest(manifest)
    assert [type(r) for r in records] == [PreferencePair, PreferencePair, PreferenceList, Rating, PreferencePair]
    assert records[0].a == str(image_dir / "x.png") and records[0].winner == records[0].a
    assert records[1].is_tie and records[1].user_id == "u1"
    assert records[2].scores == (3.0, 1.0, 2.0)
    assert records[3].normalized == pytest.approx(0.75)
    np.testing.assert_allclose(records[4].a, [0.1, 0.2])
    out = write_jsonl_manifest(records, image_dir / "copy.jsonl")
    again = read_jsonl_manifest(out)
    assert [r.id for r in again] == [r.id for r in records]
    assert again[1].label == 0.5 and again[3].rating == 4.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"type": "pair", "id": "p", "a": "x.png", "b": "missing.png", "label": 1},
            r"line 2: field 'b': file .*missing.png.* not found",
        ),
        (
            {"type": "pair", "id": "p", "a": "x.png", "b": "broken.png", "label": 1},
            r"line 2: field 'b': .*broken.png.* is not a readable image",
        ),
        (
            {"type": "pair", "id": "p", "a": "x.png", "b": "y.png", "label": 1.3},
            r"line 2: field 'label' = 1.3 is outside \[0, 1\]",
        ),
        ('{"type": "pair", "id": "p", "a": "x.png", "b": "y.png", "label": NaN}', r"line 2: field 'label' is NaN"),
        (
            {"type": "pair", "id": "ok", "a": "x.png", "b": "y.png", "label": 1},
            r"line 2: duplicate id 'ok' \(first on line 1\)",
        ),
        ({"type": "pair", "id": "p", "a": "x.png", "label": 1}, r"line 2: field 'b' is missing"),
        ({"type": "list", "id": "l", "items": ["x.png"], "scores": [1]}, r"line 2: .*needs at least 2"),
        (
            {"type": "rating", "id": "r", "item": "x.png", "rating": 9, "scale": [1, 5]},
            r"line 2: field 'rating' = 9.0 is outside",
        ),
        ({"type": "vote", "id": "v"}, r"line 2: field 'type' = 'vote' is not one of"),
        ("{not json", r"line 2: not valid JSON"),
    ],
)
def test_manifest_errors_name_file_line_field(image_dir, line, message):
    manifest = _write_lines(
        image_dir / "bad.jsonl", [{"type": "pair", "id": "ok", "a": "x.png", "b": "y.png", "label": 1}, line]
    )
    with pytest.raises(DataError, match=message) as info:
        read_jsonl_manifest(manifest)
    assert str(manifest) in str(info.value) and "nothing was loaded" in str(info.value)


def test_manifest_lists_every_problem_at_once(image_dir):
    manifest = _write_lines(
        image_dir / "bad.jsonl",
        [
            {"type": "pair", "id": "a", "a": "x.png", "b": "y.png", "label": 2},
            {"type": "pair", "id": "b", "a": "nope.png", "b": "y.png", "label": 1},
        ],
    )
    with pytest.raises(DataError) as info:
        read_jsonl_manifest(manifest)
    assert len(info.value.problems) == 2
    with pytest.raises(DataError, match="file not found"):
        read_jsonl_manifest(image_dir / "absent.jsonl")


def _pickapic_frame(**overrides):
    frame = pd.DataFrame(
        {
            "caption": ["a red square", "a green square", "a blue square"],
            "jpg_0": [_png((255, 0, 0)), _png((0, 255, 0)), _png((0, 0, 255))],
            "jpg_1": [_png((9, 9, 9)), _png((8, 8, 8)), _png((7, 7, 7))],
            "label_0": [1.0, 0.5, 0.0],
            "label_1": [0.0, 0.5, 1.0],
            "user_id": [11, 12, 11],
        }
    )
    for key, value in overrides.items():
        frame[key] = value
    return frame


def test_pickapic_reader_with_tie_policies(tmp_path):
    path = tmp_path / "pairs.parquet"
    _pickapic_frame().to_parquet(path)
    kept = read_pickapic_parquet(path, ties="keep")
    assert [p.label for p in kept] == [1.0, 0.5, 0.0]
    assert kept[0].prompt == "a red square" and kept[0].user_id == "11" and isinstance(kept[0].a, bytes)
    dropped = read_pickapic_parquet(path, ties="drop")
    assert [p.id for p in dropped] == ["row0", "row2"]
    # Roundtrip through the writer.
    out = write_pickapic_parquet(kept, tmp_path / "copy.parquet")
    again = read_pickapic_parquet(out, ties="keep")
    assert [(p.id, p.label, p.a) for p in again] == [(p.id, p.label, p.a) for p in kept]


def test_pickapic_reader_accepts_paths(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png())
    (tmp_path / "img" / "b.png").write_bytes(_png((0, 0, 0)))
    path = tmp_path / "pairs.parquet"
    pd.DataFrame({"caption": ["c"], "jpg_0": ["img/a.png"], "jpg_1": ["img/b.png"], "label_0": [1.0]}).to_parquet(path)
    (pair,) = read_pickapic_parquet(path, ties="keep")
    assert pair.a == str(tmp_path / "img" / "a.png")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"label_0": [1.0, 1.7, 0.0], "label_1": [0.0, -0.7, 1.0]},
            r"row 1: column 'label_0' = 1.7 is outside \[0, 1\]",
        ),
        ({"label_0": [1.0, float("nan"), 0.0]}, r"row 1: 'label_0' is missing or NaN"),
        ({"label_1": [0.0, 0.2, 1.0]}, r"row 1: 'label_1' = 0.2 is not 1 − label_0"),
        ({"jpg_1": [_png(), b"garbage", _png()]}, r"row 1: column 'jpg_1' is not a readable image"),
        ({"jpg_0": ["nowhere.png"] * 3}, r"row 0: column 'jpg_0': .*nowhere.png.* is missing \(file not found\)"),
        ({"ranking_id": ["a", "b", "a"]}, r"row 2: duplicate id 'a' in column 'ranking_id' \(first at row 0\)"),
    ],
)
def test_pickapic_errors_name_row_and_column(tmp_path, overrides, message):
    path = tmp_path / "bad.parquet"
    _pickapic_frame(**overrides).to_parquet(path)
    with pytest.raises(DataError, match=message):
        read_pickapic_parquet(path, ties="keep")


def test_pickapic_wrong_columns_and_policy(tmp_path):
    path = tmp_path / "bad.parquet"
    _pickapic_frame().rename(columns={"label_0": "label"}).to_parquet(path)
    with pytest.raises(DataError, match=r"missing column\(s\) \['label_0'\].*found \["):
        read_pickapic_parquet(path, ties="keep")
    with pytest.raises(ValueError, match="ties must be 'keep' or 'drop'"):
        read_pickapic_parquet(path, ties="average")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_pickapic_parquet(tmp_path / "junk.parquet", ties="keep")


def test_failed_write_leaves_the_old_file_untouched(tmp_path):
    path = tmp_path / "m.jsonl"
    good = [PreferencePair(id="p", a="x", b="y", label=1.0)]
    write_jsonl_manifest(good, path)
    before = path.read_bytes()
    with pytest.raises(DataError, match="duplicate id 'p'"):
        write_jsonl_manifest(good + good, path)
    bad = [PreferencePair(id="q", a=b"\x00bytes", b="y", label=1.0)]
    with pytest.raises(DataError, match="write Parquet instead"):
        write_jsonl_manifest(bad, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]  # no temporary files left behind


def test_ratings_table_csv_and_parquet(tmp_path):
    from mmpref.data import read_ratings_table

    (tmp_path / "x.png").write_bytes(_png())
    (tmp_path / "y.png").write_bytes(_png((0, 9, 0)))
    frame = pd.DataFrame({"image": ["x.png", "y.png", "x.png"], "user": ["7", "7", "bo"], "rating": [5, 1, 3]})
    frame.to_csv(tmp_path / "r.csv", index=False)
    frame.to_parquet(tmp_path / "r.parquet")
    for name in ("r.csv", "r.parquet"):
        ratings = read_ratings_table(tmp_path / name)
        assert [(r.user_id, r.rating) for r in ratings] == [("7", 5.0), ("7", 1.0), ("bo", 3.0)]
        assert ratings[0].item == str(tmp_path / "x.png")
    frame.assign(rating=[5, 9, 3]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"row 1: column 'rating' = 9.0 is outside the scale"):
        read_ratings_table(tmp_path / "bad.csv")
    frame.rename(columns={"user": "rater"}).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['user'\]"):
        read_ratings_table(tmp_path / "cols.csv")
    frame.assign(image=["x.png", "gone.png", "x.png"]).to_csv(tmp_path / "gone.csv", index=False)
    with pytest.raises(DataError, match="row 1: column 'image': .*gone.png"):
        read_ratings_table(tmp_path / "gone.csv")


def test_pickapic_user_ids_are_kept_for_personal_models(tmp_path):
    path = tmp_path / "pairs.parquet"
    _pickapic_frame().to_parquet(path)
    users = {p.user_id for p in read_pickapic_parquet(path, ties="keep")}
    assert users == {"11", "12"}
