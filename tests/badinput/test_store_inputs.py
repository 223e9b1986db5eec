"""Label stores that are not what they claim, and web requests that do not fit: refused cleanly.

* Corrupt or foreign store files × every ``mmpref label`` action: exit 2, the file named, no traceback, the file
  byte-identical (a damaged store is never "repaired" into an empty one).
* An older store that registered a non-media file (``/etc/passwd``-like text, a file swapped after registration):
  migrated, and the file is never served nor queued.
* The web app: ids that fit no SQL integer, negative ids, odd tokens → 4xx, never 500.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from _media_cases import png_bytes
from fastapi.testclient import TestClient

from mmpref.feedback.app import create_app
from mmpref.feedback.store import SCHEMA_VERSION, LabelStore, StoreError


def _valid_store(path, media) -> None:
    store = LabelStore(path)
    store.add_task("pair", media, prompt="p")
    store.add_annotator("ann", "token-ann-123")
    store.engine.dispose()


def _corrupt(kind: str, path, media) -> None:
    if kind == "random-bytes":
        path.write_bytes(bytes((i * 7919) % 251 for i in range(8192)))
    elif kind == "empty-file-named-sqlite":
        path.write_text("")  # an empty file is a valid empty SQLite database: it becomes a store (see below)
    elif kind == "text-file":
        path.write_text("labels: none\n" * 50)
    elif kind in ("truncated-half", "truncated-header"):
        _valid_store(path, media)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated-half" else data[:60])
    elif kind == "zeroed-pages":
        _valid_store(path, media)
        data = bytearray(path.read_bytes())
        data[4096:8192] = b"\xff" * 4096  # the second page (a table's root) overwritten
        path.write_bytes(bytes(data))
    elif kind == "foreign-database":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.commit()
        conn.close()
    elif kind in ("no-version-row", "newer-version"):
        _valid_store(path, media)
        conn = sqlite3.connect(path)
        conn.execute("DELETE FROM schema_info" if kind == "no-version-row" else "UPDATE schema_info SET version = 999")
        conn.commit()
        conn.close()  # closed: the WAL is folded back into the file before the snapshot
    elif kind == "folder":
        path.mkdir()
    else:
        raise AssertionError(kind)


CORRUPT = [
    "random-bytes",
    "text-file",
    "truncated-half",
    "truncated-header",
    "zeroed-pages",
    "foreign-database",
    "no-version-row",
    "newer-version",
    "folder",
]
ACTIONS = {
    "export": lambda tmp: ["export", tmp / "out.jsonl"],
    "serve": lambda tmp: ["serve", "--port", "1"],
    "annotator": lambda tmp: ["annotator", "zoe"],
    "import": lambda tmp: ["import", tmp / "m.jsonl"],
}


@pytest.fixture
def media(tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(colour=(i * 90, 10, 10)))
    return [tmp_path / "0.png", tmp_path / "1.png"]


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("kind", CORRUPT)
def test_a_corrupt_or_foreign_store_is_named_and_left_alone(tmp_path, media, kind, action, checks):
    db = tmp_path / "labels.sqlite"
    _corrupt(kind, db, media)
    (tmp_path / "m.jsonl").write_text(json.dumps({"type": "pair", "id": "p", "a": "0.png", "b": "1.png", "label": 1}))
    (tmp_path / "out.jsonl").write_text("earlier\n")
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["label", "--db", db, *ACTIONS[action](tmp_path)])
    checks.assert_clean_error(result, "labels.sqlite", job="label")
    checks.assert_unchanged(before, tmp_path)
    with pytest.raises(StoreError, match="labels.sqlite"):
        LabelStore(db)


def test_an_empty_file_becomes_a_store_but_only_for_writing_jobs(tmp_path, media, checks):
    db = tmp_path / "labels.sqlite"
    db.write_bytes(b"")  # SQLite's own empty database
    (tmp_path / "out.jsonl").write_text("earlier\n")
    before = checks.snapshot(tmp_path)
    for action in ("export", "serve"):
        result = checks.run_cli(["label", "--db", db, *ACTIONS[action](tmp_path)])
        checks.assert_clean_error(result, "labels.sqlite", job="label")
        assert "an empty file" in result.err
    checks.assert_unchanged(before, tmp_path)
    assert LabelStore(db).schema_version == SCHEMA_VERSION  # a writing job (import, annotator) makes it a store


# --- non-media registered by an older store -----------------------------------------------------------------------


def _version2_store(path, rows) -> None:
    """The version-2 layout (no media check): media rows as given, one pair task over each two rows."""
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE schema_info (version INTEGER NOT NULL);
        INSERT INTO schema_info VALUES (2);
        CREATE TABLE media (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, kind VARCHAR(16) NOT NULL);
        CREATE TABLE tasks (id INTEGER PRIMARY KEY, kind VARCHAR(16) NOT NULL, media_ids TEXT NOT NULL,
                            prompt TEXT, source TEXT, created_at FLOAT NOT NULL);
        CREATE TABLE annotators (id INTEGER PRIMARY KEY, name VARCHAR(128) NOT NULL UNIQUE,
                                 token_hash VARCHAR(64) NOT NULL UNIQUE);
        CREATE TABLE labels (id INTEGER PRIMARY KEY, label_uuid VARCHAR(64) NOT NULL UNIQUE,
                             task_id INTEGER NOT NULL REFERENCES tasks(id),
                             annotator_id INTEGER NOT NULL REFERENCES annotators(id), answer TEXT NOT NULL,
                             response_ms FLOAT, created_at FLOAT NOT NULL, "repeat" INTEGER NOT NULL DEFAULT 0,
                             CONSTRAINT one_label_per_serving UNIQUE (task_id, annotator_id, "repeat"));
    """)
    for path_, kind in rows:
        conn.execute("INSERT INTO media (path, kind) VALUES (?, ?)", (str(path_), kind))
    for first in range(1, len(rows), 2):
        conn.execute(
            "INSERT INTO tasks (kind, media_ids, created_at) VALUES ('pair', ?, 0)", (json.dumps([first, first + 1]),)
        )
    conn.commit()
    conn.close()


def test_non_media_registered_by_an_older_store_is_never_served(tmp_path, media):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    db = tmp_path / "old.sqlite"
    _version2_store(
        db,
        [
            (secret, "image"),
            (media[0], "image"),
            (media[0].parent / "gone.png", "image"),
            (fake, "image"),
            (media[1], "video"),  # a wrong kind: the check corrects it
        ],
    )
    store = LabelStore(db)  # migrated in place: every row is checked
    assert store.schema_version == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        mimes = dict(conn.execute("SELECT id, mime FROM media").fetchall())
    assert mimes == {1: None, 2: "image/png", 3: None, 4: None, 5: "image/png"}
    store.add_annotator("ann", "token-ann-123")
    client = TestClient(create_app(store))
    auth = {"Authorization": "Bearer token-ann-123"}
    for media_id in (1, 3, 4):
        response = client.get(f"/media/{media_id}", headers=auth)
        assert response.status_code == 404 and b"root:" not in response.content
    assert client.get("/media/2", headers=auth).status_code == 200
    task = client.get("/api/next", headers=auth).json()  # tasks 1 (passwd, image) and 2 (gone, fake) are skipped
    assert task == {"done": True}  # both tasks hold a failed row: nothing is queued
    # a file swapped after it passed the check is not served either
    good = store.add_task("pair", media)
    assert client.get("/api/next", headers=auth).json()["task"]["id"] == good
    media[0].write_text("root:x:0:0 swapped in after registration\n")
    response = client.get("/media/2", headers=auth)
    assert response.status_code == 404 and b"root:" not in response.content
    media[0].unlink()
    media[0].symlink_to(secret)
    assert client.get("/media/2", headers=auth).status_code == 404


def test_registering_non_media_through_the_python_api_is_refused(tmp_path, media):
    store = LabelStore(tmp_path / "s.sqlite")
    (tmp_path / "notes.txt").write_text("hello")
    for bad in (tmp_path / "notes.txt", tmp_path / "nowhere.png", "/etc/passwd"):
        with pytest.raises(StoreError, match="cannot be registered as media"):
            store.add_task("pair", [media[0], bad])
    assert store.next_task(1) is None and store.task(1) is None


# --- the web app's parameters -------------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path, media):
    store = LabelStore(tmp_path / "web.sqlite")
    store.add_task("pair", media)
    store.add_annotator("ann", "token-ann-123")
    return TestClient(create_app(store), raise_server_exceptions=False)


AUTH = {"Authorization": "Bearer token-ann-123"}
HUGE = ["99999999999999999999999", str(2**63), str(2**64 + 1), "-1", "0", "-99999999999999999999999", "1" * 400]


@pytest.mark.parametrize("value", HUGE)
def test_media_ids_that_fit_no_integer_are_404(client, value):
    assert client.get(f"/media/{value}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("value", HUGE)
def test_task_ids_that_fit_no_integer_are_refused_not_500(client, value):
    body = {"task_id": int(value), "label_uuid": "abcdef0123456789", "answer": {"choice": 0}}
    assert client.post("/api/labels", json=body, headers=AUTH).status_code == 422


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("get", "/media/1.5", {}),
        ("get", "/media/1e3", {}),
        ("get", "/media/0x10", {}),
        ("get", "/api/next?repeat=maybe", {}),
        ("get", "/api/next?repeat=" + "1" * 5000, {}),
        ("post", "/api/labels", {"json": {"task_id": "1", "label_uuid": "x" * 8, "answer": []}}),
        ("post", "/api/labels", {"json": {"task_id": 1, "label_uuid": "abcdefgh", "answer": {"choice": [0]}}}),
        (
            "post",
            "/api/labels",
            {"json": {"task_id": 1, "label_uuid": "abcdefgh", "answer": {"choice": 0}, "response_ms": 1e308}},
        ),
        ("post", "/api/labels", {"content": b"\xff\xfe not json", "headers": {"Content-Type": "application/json"}}),
        ("post", "/api/login", {"content": '{"token": "\\ud800abcdefgh"}'}),
    ],
)
def test_odd_parameters_are_4xx_never_500(client, method, url, kwargs):
    headers = {**AUTH, **kwargs.pop("headers", {})}
    response = getattr(client, method)(url, headers=headers, **kwargs)
    assert 400 <= response.status_code < 500, (url, response.status_code, response.text[:200])


@pytest.mark.parametrize("token", ["\ud800abc", "x" * 10_000, "Bearer", "token-ann-123\x00"])
def test_odd_tokens_are_401(client, token):
    header = {"Authorization": f"Bearer {token}".encode("utf-8", "surrogatepass")}
    assert client.get("/api/me", headers=header).status_code == 401
