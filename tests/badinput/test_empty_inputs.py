"""Empty inputs are errors naming the file, never "created 0 tasks" / exit 0 or a model trained on nothing.

Generated per reader: every way a file can hold no records (0 bytes, whitespace, comments only, a header without
rows, a Parquet schema without rows, an HDF5 file without demos or pairs, a folder or list without media) × every
entry point that reads it (the library reader, and the CLI jobs ``label import``, ``enroll``, ``score``, ``cpl``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmpref.data import DataError, read_jsonl_manifest, read_pickapic_parquet, read_ratings_table

EMPTY_JSONL = {
    "zero-bytes": b"",
    "newlines": b"\n\n\n",
    "whitespace": b"  \t \n \r\n   ",
    "comments": b"# a manifest\n# with nothing in it\n",
    "bom-only": b"\xef\xbb\xbf",
    "bom-and-newline": b"\xef\xbb\xbf\n",
}


@pytest.mark.parametrize("kind", sorted(EMPTY_JSONL))
def test_empty_jsonl_is_an_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(EMPTY_JSONL[kind])
    with pytest.raises(DataError, match="no records|is empty") as info:
        read_jsonl_manifest(path)
    assert str(path) in str(info.value)


def _empty_tables(tmp_path: Path, columns: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    (tmp_path / "zero.csv").write_bytes(b"")
    out["csv-zero-bytes"] = tmp_path / "zero.csv"
    (tmp_path / "header.csv").write_text(",".join(columns) + "\n")
    out["csv-header-only"] = tmp_path / "header.csv"
    (tmp_path / "blank.csv").write_text("\n\n")
    out["csv-blank-lines"] = tmp_path / "blank.csv"
    pd.DataFrame({c: pd.Series([], dtype=object) for c in columns}).to_parquet(tmp_path / "norows.parquet")
    out["parquet-no-rows"] = tmp_path / "norows.parquet"
    (tmp_path / "zero.parquet").write_bytes(b"")
    out["parquet-zero-bytes"] = tmp_path / "zero.parquet"
    return out


TABLE_KINDS = ["csv-zero-bytes", "csv-header-only", "csv-blank-lines", "parquet-no-rows", "parquet-zero-bytes"]


@pytest.mark.parametrize("kind", TABLE_KINDS)
def test_empty_ratings_table(tmp_path, kind):
    path = _empty_tables(tmp_path, ("image", "user", "rating"))[kind]
    with pytest.raises(DataError) as info:
        read_ratings_table(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", [k for k in TABLE_KINDS if k.startswith("parquet")])
@pytest.mark.parametrize("ties", ["keep", "drop"])
def test_empty_pickapic_parquet(tmp_path, kind, ties):
    path = _empty_tables(tmp_path, ("caption", "jpg_0", "jpg_1", "label_0"))[kind]
    with pytest.raises(DataError) as info:
        read_pickapic_parquet(path, ties=ties)
    assert str(path) in str(info.value)


def test_parquet_of_only_ties_dropped_is_empty(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "b.png")
    rows = [{"caption": "c", "jpg_0": "a.png", "jpg_1": "b.png", "label_0": 0.5}] * 3
    pd.DataFrame(rows).to_parquet(tmp_path / "ties.parquet")
    assert len(read_pickapic_parquet(tmp_path / "ties.parquet", ties="keep")) == 3
    with pytest.raises(DataError, match="ties"):
        read_pickapic_parquet(tmp_path / "ties.parquet", ties="drop")


# --- the CLI jobs that read them ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(EMPTY_JSONL))
def test_label_import_of_an_empty_manifest_exits_2_and_leaves_the_store(tmp_path, checks, kind):
    store = tmp_path / "labels.sqlite"
    assert checks.run_cli(["label", "--db", store, "annotator", "ann"]).code == 0
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(EMPTY_JSONL[kind])
    rows = _rows(store)  # a SQLite file's bytes move with its WAL: compare what it holds
    before = checks.snapshot(path)
    result = checks.run_cli(["label", "--db", store, "import", path])
    checks.assert_clean_error(result, path.name, job="label")
    assert "created" not in result.out
    checks.assert_unchanged(before, path)
    assert _rows(store) == rows


def _rows(store: Path) -> list[str]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(store)) as conn:
        return list(conn.iterdump())


def test_label_import_of_an_empty_parquet_exits_2(tmp_path, checks):
    path = _empty_tables(tmp_path, ("caption", "jpg_0", "jpg_1", "label_0"))["parquet-no-rows"]
    result = checks.run_cli(["label", "--db", tmp_path / "labels.sqlite", "import", path])
    checks.assert_clean_error(result, path.name, job="label")


@pytest.fixture
def taste_model(tmp_path) -> Path:
    import torch

    from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, save_taste_model

    torch.manual_seed(0)
    model = PersonalTasteModel(1280, num_users=2, rank=3, hidden=8).eval()
    return save_taste_model(model, CodePrior(np.zeros(3), np.eye(3)), "efficientnet-lite0-imagenet", tmp_path / "m")


@pytest.mark.parametrize("kind", ["zero-bytes", "comments"])
def test_enroll_from_an_empty_labels_file_exits_2(tmp_path, taste_model, checks, kind):
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(EMPTY_JSONL[kind])
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["enroll", path, "--model", taste_model, "--user", "ann"])
    checks.assert_clean_error(result, path.name, job="enroll")
    checks.assert_unchanged(before, tmp_path)
    assert not (taste_model / "users" / "ann.json").exists()


@pytest.mark.parametrize("kind", ["empty-folder", "folder-of-text", "empty-list", "list-of-comments", "nested-empty"])
def test_score_with_nothing_to_score_exits_2(tmp_path, taste_model, checks, kind):
    target = tmp_path / "in"
    target.mkdir()
    if kind == "folder-of-text":
        (target / "notes.md").write_text("no media here")
        (target / "data.json").write_text("{}")
    elif kind == "empty-list":
        (target / "list.txt").write_text("")
        target = target / "list.txt"
    elif kind == "list-of-comments":
        (target / "list.txt").write_text("# nothing\n\n")
        target = target / "list.txt"
    elif kind == "nested-empty":
        (target / "sub").mkdir()
        (target / "sub" / "deeper").mkdir()
    result = checks.run_cli(["score", target, "--model", taste_model])
    checks.assert_clean_error(result, job="score")
    assert "nothing to score" in result.err or "holds no images" in result.err
    assert target.name in result.err or "nothing to score" in result.err


def test_hdf5_without_demos_or_pairs(tmp_path):
    h5py = pytest.importorskip("h5py")
    from mmpref.control.robomimic_io import read_preference_pairs, read_robomimic

    with h5py.File(tmp_path / "nodemos.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(DataError, match="no demos"):
        read_robomimic(tmp_path / "nodemos.hdf5")
    with h5py.File(tmp_path / "nopairs.hdf5", "w") as f:
        demo = f.create_group("data/demo_0")
        demo.create_group("obs").create_dataset("s", data=np.zeros((3, 2)))
        demo.create_dataset("actions", data=np.zeros((3, 1)))
        demo.create_dataset("rewards", data=np.zeros(3))
        group = f.create_group("preferences")
        for name in ("demo_a", "start_a", "demo_b", "start_b", "length"):
            group.create_dataset(name, data=np.zeros(0, np.int64))
        group.create_dataset("label", data=np.zeros(0, np.float32))
    assert len(read_robomimic(tmp_path / "nopairs.hdf5")) == 1
    with pytest.raises(DataError, match="0 pairs"):
        read_preference_pairs(tmp_path / "nopairs.hdf5")
