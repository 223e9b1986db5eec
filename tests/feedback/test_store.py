from __future__ import annotations

import json
import sqlite3

import pytest

from mmpref.data import PreferenceList, PreferencePair, Rating, read_jsonl_manifest
from mmpref.feedback.exchange import export_labels, import_manifest, label_records
from mmpref.feedback.store import SCHEMA_VERSION, LabelStore, StoreError


def test_queue_never_repeats_a_task_for_one_annotator(store):
    ann = store.annotator_for_token(store.add_annotator("ann", "token-ann-123"))[0]
    seen = []
    while (task := store.next_task(ann)) is not None:
        seen.append(task.id)
        answer = {"pair": {"choice": 0}, "list": {"ranking": [3, 2, 1, 0]}, "rating": {"rating": 4}}[task.kind]
        store.add_label(ann, task.id, answer, label_uuid=f"uuid-{task.id}-ann")
    assert sorted(seen) == [1, 2, 3, 4] and len(set(seen)) == 4
    assert store.next_task(ann, repeat=True) is not None  # only when asked
    with pytest.raises(StoreError, match="already labelled"):
        store.add_label(ann, 1, {"choice": 1}, label_uuid="another-uuid-1")
    again, created = store.add_label(ann, 1, {"choice": 1}, label_uuid="another-uuid-2", repeat=True)
    assert created and again.repeat == 1
    assert store.progress(ann) == {"labelled": 4, "remaining": 0, "total": 4}


def test_retried_label_is_stored_once_and_bad_answers_are_refused(store):
    ann = store.annotator_for_token(store.add_annotator("ann", "token-ann-123"))[0]
    bob = store.annotator_for_token(store.add_annotator("bob", "token-bob-123"))[0]
    first, created = store.add_label(ann, 1, {"choice": "tie"}, label_uuid="same-uuid-1", response_ms=812.0)
    retry, created_again = store.add_label(ann, 1, {"choice": "tie"}, label_uuid="same-uuid-1", response_ms=812.0)
    assert created and not created_again and retry.id == first.id
    assert len(store.labels()) == 1
    with pytest.raises(StoreError, match="already used"):
        store.add_label(bob, 2, {"choice": 0}, label_uuid="same-uuid-1")
    for task, answer, message in [
        (1, {"choice": 2}, "choice"),
        (3, {"ranking": [0, 0, 1, 2]}, "permutation"),
        (4, {"rating": 6}, "1 to 5"),
        (99, {"choice": 0}, "unknown task"),
    ]:
        with pytest.raises(StoreError, match=message):
            store.add_label(bob, task, answer, label_uuid=f"uuid-bad-{task}")


def test_export_and_import_round_trip(store, tmp_path, images):
    ann = store.annotator_for_token(store.add_annotator("ann", "token-ann-123"))[0]
    store.add_label(ann, 1, {"choice": 1}, "uuid-0001")
    store.add_label(ann, 3, {"ranking": [2, 0, 3, 1]}, "uuid-0003")
    store.add_label(ann, 4, {"rating": 5}, "uuid-0004")
    records = label_records(store)
    pair, ranked, rating = records
    assert isinstance(pair, PreferencePair) and pair.label == 0.0 and pair.user_id == "ann"
    assert isinstance(ranked, PreferenceList) and ranked.scores == (2.0, 0.0, 3.0, 1.0)
    assert isinstance(rating, Rating) and rating.rating == 5.0
    exported = read_jsonl_manifest(export_labels(store, tmp_path / "out.jsonl"))
    assert [r.id for r in exported] == [r.id for r in records]
    assert exported[0].meta["label_uuid"] == "uuid-0001"
    assert len(export_labels(store, tmp_path / "pairs.parquet").read_bytes()) > 0
    other = LabelStore(tmp_path / "other.sqlite")
    created = import_manifest(other, tmp_path / "out.jsonl")
    assert [other.task(t).kind for t in created] == ["pair", "list", "rating"]


def test_an_old_store_is_migrated_in_place(tmp_path, images):
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)  # the version-1 layout: tasks without a source column
    conn.executescript("""
        CREATE TABLE schema_info (version INTEGER NOT NULL);
        INSERT INTO schema_info VALUES (1);
        CREATE TABLE media (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, kind VARCHAR(16) NOT NULL);
        CREATE TABLE tasks (id INTEGER PRIMARY KEY, kind VARCHAR(16) NOT NULL, media_ids TEXT NOT NULL,
                            prompt TEXT, created_at FLOAT NOT NULL);
        CREATE TABLE annotators (id INTEGER PRIMARY KEY, name VARCHAR(128) NOT NULL UNIQUE,
                                 token_hash VARCHAR(64) NOT NULL UNIQUE);
        CREATE TABLE labels (id INTEGER PRIMARY KEY, label_uuid VARCHAR(64) NOT NULL UNIQUE,
                             task_id INTEGER NOT NULL REFERENCES tasks(id),
                             annotator_id INTEGER NOT NULL REFERENCES annotators(id), answer TEXT NOT NULL,
                             response_ms FLOAT, created_at FLOAT NOT NULL, "repeat" INTEGER NOT NULL DEFAULT 0,
                             CONSTRAINT one_label_per_serving UNIQUE (task_id, annotator_id, "repeat"));
    """)
    conn.execute("INSERT INTO media (path, kind) VALUES (?, 'image'), (?, 'image')", (str(images[0]), str(images[1])))
    conn.execute(
        "INSERT INTO tasks (kind, media_ids, prompt, created_at) VALUES ('pair', ?, 'old', 0)", (json.dumps([1, 2]),)
    )
    conn.commit()
    conn.close()
    store = LabelStore(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.task(1).prompt == "old" and store.task(1).source is None
    new = store.add_task("pair", images[:2], source="pbrl")
    assert store.task(new).source == "pbrl"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pickapic_import_writes_media_once_and_keeps_labels(tmp_path, store):
    import io

    import pandas as pd
    from PIL import Image

    from mmpref.feedback.exchange import import_pickapic

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
        return buf.getvalue()

    red, blue = png((255, 0, 0)), png((0, 0, 255))
    pd.DataFrame(
        {
            "caption": ["c1", "c2"],
            "jpg_0": [red, blue],
            "jpg_1": [blue, red],
            "label_0": [1.0, 0.5],
            "user_id": ["u", "u"],
        }
    ).to_parquet(tmp_path / "pp.parquet")
    store.add_annotator("imported", "token-imported-1")
    created = import_pickapic(store, tmp_path / "pp.parquet", tmp_path / "media", annotator="imported")
    assert len(created) == 2 and len(list((tmp_path / "media").iterdir())) == 2
    answers = [lb.answer for lb in store.labels() if lb.task_id in created]
    assert answers == [{"choice": 0}, {"choice": "tie"}]
    assert store.task(created[0]).source == "pickapic:row0"
    with pytest.raises(StoreError, match="unknown annotator"):
        import_pickapic(store, tmp_path / "pp.parquet", tmp_path / "media", annotator="nobody")
