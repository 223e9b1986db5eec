from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mmpref.feedback.app import create_app


@pytest.fixture
def client(store):
    store.add_annotator("ann", "token-ann-123")
    store.add_annotator("bob", "token-bob-123")
    return TestClient(create_app(store, max_body_bytes=4096))


def auth(name):
    return {"Authorization": f"Bearer token-{name}-123"}


def test_no_token_is_401_everywhere(client):
    for method, url in [
        ("get", "/api/me"),
        ("get", "/api/next"),
        ("get", "/api/labels"),
        ("get", "/media/1"),
        ("post", "/api/labels"),
    ]:
        response = getattr(client, method)(url, **({"json": {}} if method == "post" else {}))
        assert response.status_code == 401, url
    assert client.get("/api/me", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.get("/").status_code == 200  # the sign-in page itself is public


def test_label_flow_and_isolation_between_annotators(client):
    task = client.get("/api/next", headers=auth("ann")).json()["task"]
    assert task["kind"] == "pair" and task["media"][0]["url"] == "/media/1"
    body = {"task_id": task["id"], "label_uuid": "abcdef0123456789", "answer": {"choice": 0}, "response_ms": 900}
    first = client.post("/api/labels", json=body, headers=auth("ann"))
    retry = client.post("/api/labels", json=body, headers=auth("ann"))
    assert first.status_code == 200 and first.json()["created"] and not retry.json()["created"]
    assert client.get("/api/next", headers=auth("ann")).json()["task"]["id"] != task["id"]
    # bob sees none of ann's labels and cannot write under ann's label id
    assert client.get("/api/labels", headers=auth("bob")).json() == []
    assert len(client.get("/api/labels", headers=auth("ann")).json()) == 1
    stolen = client.post("/api/labels", json=body, headers=auth("bob"))
    assert stolen.status_code == 409 and "already used" in stolen.json()["detail"]
    again = client.post("/api/labels", json={**body, "label_uuid": "zzzzzzzz0001"}, headers=auth("ann"))
    assert again.status_code == 409
    bad = client.post("/api/labels", json={**body, "task_id": 3, "label_uuid": "zzzzzzzz0002"}, headers=auth("ann"))
    assert bad.status_code == 422 and "ranking" in bad.json()["detail"]
    # login sets an HttpOnly cookie that also opens media
    login = client.post("/api/login", json={"token": "token-bob-123"})
    assert login.status_code == 200 and "httponly" in login.headers["set-cookie"].lower()
    assert client.get("/media/1").status_code == 200
    assert client.get("/media/1").headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "url",
    [
        "/media/../../etc/passwd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
        "/media/1?path=/etc/passwd/../x",
        "/api/next?repeat=..%5c..%5c",
        "/media/%2Fetc%2Fpasswd",
        "/media/1%00",
    ],
)
def test_traversal_and_absolute_paths_are_refused(client, url):
    response = client.get(url, headers=auth("ann"))
    assert response.status_code in (400, 404, 422), (url, response.status_code)
    assert b"root:" not in response.content


def test_files_are_only_served_by_registered_id(client):
    assert client.get("/media/999", headers=auth("ann")).status_code == 404
    assert client.get("/media/etc-passwd", headers=auth("ann")).status_code == 422


def test_oversized_bodies_are_refused(client):
    huge = {"task_id": 1, "label_uuid": "abcdef0123456789", "answer": {"choice": 0, "pad": "x" * 10_000}}
    assert client.post("/api/labels", json=huge, headers=auth("ann")).status_code == 413

    def chunks():  # no Content-Length: the body is counted as it streams in
        for _ in range(10):
            yield b"x" * 1000

    response = client.post(
        "/api/labels", content=chunks(), headers={**auth("ann"), "Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_a_path_outside_the_media_root_is_refused_at_import(store, tmp_path):
    from mmpref.data import DataError
    from mmpref.feedback.exchange import import_manifest

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0\n")
    (tmp_path / "img" / "link.png").symlink_to(outside / "secret.txt")
    tasks_before = store.progress(0)["total"]
    for escape in ("../../../../../../etc/passwd", "../outside/secret.txt", "link.png", str(outside / "secret.txt")):
        manifest = tmp_path / "img" / "m.jsonl"
        manifest.write_text(
            '{"type": "pair", "id": "ok", "a": "item0.png", "b": "item1.png", "label": 1}\n'
            f'{{"type": "rating", "id": "bad", "item": "{escape}", "rating": 3}}\n'
        )
        with pytest.raises(DataError, match="line 2: field 'item'.*outside the media root"):
            import_manifest(store, manifest)
    assert store.progress(0)["total"] == tasks_before  # all or nothing: the good first line added nothing either


def test_non_media_is_never_served_even_if_an_older_store_registered_it(tmp_path, images):
    import sqlite3

    from mmpref.feedback.store import LabelStore

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    db = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(db)  # the version-2 layout: media registered without any check
    conn.executescript(f"""
        CREATE TABLE schema_info (version INTEGER NOT NULL); INSERT INTO schema_info VALUES (2);
        CREATE TABLE media (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, kind VARCHAR(16) NOT NULL);
        CREATE TABLE tasks (id INTEGER PRIMARY KEY, kind VARCHAR(16) NOT NULL, media_ids TEXT NOT NULL,
                            prompt TEXT, source TEXT, created_at FLOAT NOT NULL);
        CREATE TABLE annotators (id INTEGER PRIMARY KEY, name VARCHAR(128) NOT NULL UNIQUE,
                                 token_hash VARCHAR(64) NOT NULL UNIQUE);
        CREATE TABLE labels (id INTEGER PRIMARY KEY, label_uuid VARCHAR(64) NOT NULL UNIQUE, task_id INTEGER NOT NULL,
                             annotator_id INTEGER NOT NULL, answer TEXT NOT NULL, response_ms FLOAT,
                             created_at FLOAT NOT NULL, "repeat" INTEGER NOT NULL DEFAULT 0);
        INSERT INTO media (path, kind) VALUES ('{secret}', 'image'), ('{images[0]}', 'image');
        INSERT INTO tasks (kind, media_ids, created_at) VALUES ('pair', '[1, 2]', 0);
    """)
    conn.commit()
    conn.close()
    old = LabelStore(db)  # migrated: every registered file is checked now
    old.add_annotator("ann", "token-ann-123")
    client = TestClient(create_app(old))
    response = client.get("/media/1", headers=auth("ann"))
    assert response.status_code == 404 and b"root:" not in response.content
    assert client.get("/media/2", headers=auth("ann")).status_code == 200
    assert client.get("/api/next", headers=auth("ann")).json() == {"done": True}  # its task is not queued


@pytest.mark.parametrize("media_id", ["99999999999999999999999", str(2**63), "0", "-1"])
def test_media_ids_no_integer_holds_are_404(client, media_id):
    assert client.get(f"/media/{media_id}", headers=auth("ann")).status_code == 404
