"""``mmpref label import|export|serve`` and ``mmpref enroll --store`` on generated bad input.

Each case: exit code 2, one message naming the bad file (and the line/field where there is one), no traceback, and
the store and every pre-existing output byte-identical afterwards (imports are all or nothing).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
from _media_cases import BAD_MEDIA_NAMES, bad_media, png_bytes

from mmpref.feedback.store import LabelStore


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("made")
    return {name: (file_name, make()) for name, (file_name, make) in bad_media(tmp).items()}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Built once: two good images, a store holding one task and one label, and an earlier export."""
    root = tmp_path_factory.mktemp("template")
    media = root / "media"
    media.mkdir()
    (media / "a.png").write_bytes(png_bytes(colour=(200, 0, 0)))
    (media / "b.png").write_bytes(png_bytes(colour=(0, 0, 200)))
    store = LabelStore(root / "labels.sqlite")
    task = store.add_task("pair", [media / "a.png", media / "b.png"], prompt="which?")
    ann = store.annotator_for_token(store.add_annotator("ann", "token-ann-123"))[0]
    store.add_label(ann, task, {"choice": 0}, "uuid-00000001")
    store.engine.dispose()  # no open connection: the file is settled before it is copied
    (root / "exported.jsonl").write_text('{"earlier": "export"}\n')
    return root


@pytest.fixture
def project(tmp_path, template):
    """A fresh copy of the template (the store's task refers to the template's images, which stay in place)."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _tasks(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM tasks").fetchone()[0]


def _import(checks, project, manifest, *extra):
    before = checks.snapshot(project)
    result = checks.run_cli(["label", "--db", project / "labels.sqlite", "import", manifest, *extra])
    return result, before


GOOD = {"type": "pair", "id": "ok", "a": "a.png", "b": "b.png", "label": 1}


@pytest.mark.parametrize("case", BAD_MEDIA_NAMES)
def test_a_bad_media_file_fails_the_whole_import(checks, project, made, case):
    """Record 1 is good, record 2 names a bad file: exit 2, the file named, the store unchanged (all or nothing)."""
    file_name, data = made[case]
    media = project / "media"
    (media / file_name).write_bytes(data)
    manifest = media / f"{case}.jsonl"
    bad = {"type": "pair", "id": "bad", "a": "a.png", "b": file_name, "label": 0}
    manifest.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    result, before = _import(checks, project, manifest)
    checks.assert_clean_error(result, manifest, file_name, "line 2", job="label")
    checks.assert_unchanged(before, project)
    assert _tasks(project / "labels.sqlite") == 1


ESCAPES = {
    "traversal": "../../../../../../../../etc/passwd",
    "traversal-image-name": "../../../../../../../../etc/hostname.png",
    "sibling-folder": "../outside/real.png",
    "absolute": "/etc/passwd",
    "symlink-out": "link-out.png",
    "symlinked-folder": "link-dir/real.png",
    "symlink-loop": "loop.png",
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_import_refuses_media_outside_the_media_root(project, case, checks):
    media, outside = project / "media", project / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "real.png").write_bytes(png_bytes(colour=(9, 9, 9)))
    (media / "link-out.png").symlink_to(outside / "real.png")
    (media / "link-dir").symlink_to(outside, target_is_directory=True)
    (media / "loop.png").symlink_to(media / "loop.png")
    manifest = media / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "x", "b": ESCAPES[case]}) + "\n")
    result, before = _import(checks, project, manifest)
    checks.assert_clean_error(result, manifest, "line 2", job="label")
    assert ("unresolvable" if case == "symlink-loop" else "outside the media root") in result.err
    checks.assert_unchanged(before, project)
    assert _tasks(project / "labels.sqlite") == 1
    if case in ("sibling-folder", "symlink-out", "symlinked-folder"):  # widening the root is explicit
        result = checks.run_cli(
            ["label", "--db", project / "labels.sqlite", "import", manifest, "--media-root", project]
        )
        assert result.code == 0, result.err
        assert _tasks(project / "labels.sqlite") == 3


WRONG_TYPES = {
    "id-list": {**GOOD, "id": ["x"]},
    "id-bool": {**GOOD, "id": True},
    "label-string": {**GOOD, "label": "1"},
    "label-bool": {**GOOD, "label": True},
    "label-null": {**GOOD, "label": None},
    "a-number": {**GOOD, "a": 7},
    "a-object": {**GOOD, "a": {"path": "a.png"}},
    "a-empty": {**GOOD, "a": ""},
    "prompt-number": {**GOOD, "prompt": 3},
    "meta-string": {**GOOD, "meta": "x"},
    "type-number": {**GOOD, "type": 5},
    "items-string": {"type": "list", "id": "l", "items": "a.png", "scores": [1, 2]},
    "scores-strings": {"type": "list", "id": "l", "items": ["a.png", "b.png"], "scores": ["1", "2"]},
    "scores-short": {"type": "list", "id": "l", "items": ["a.png", "b.png"], "scores": [1]},
    "scale-number": {"type": "rating", "id": "r", "item": "a.png", "rating": 3, "scale": 5},
    "scale-three": {"type": "rating", "id": "r", "item": "a.png", "rating": 3, "scale": [1, 3, 5]},
    "rating-string": {"type": "rating", "id": "r", "item": "a.png", "rating": "3"},
    "features-not-media": {**GOOD, "a": [0.1, 0.2], "b": [0.3, 0.4]},
    "nested-features": {**GOOD, "a": [[0.1], [0.2]], "b": [0.3, 0.4]},
    "array-line": [1, 2, 3],
    "string-line": "pair",
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrong_json_types_fail_the_import_naming_the_line(project, case, checks):
    manifest = project / "media" / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n" + json.dumps(WRONG_TYPES[case]) + "\n")
    result, before = _import(checks, project, manifest)
    checks.assert_clean_error(result, manifest, "'ok'" if case == "features-not-media" else "line 2", job="label")
    checks.assert_unchanged(before, project)
    assert _tasks(project / "labels.sqlite") == 1


ENCODINGS = {
    "latin1-line": lambda: json.dumps(GOOD).encode() + b"\n" + '{"id": "é", "a": "a.png"}'.encode("latin-1") + b"\n",
    "utf16-file": lambda: (json.dumps(GOOD) + "\n").encode("utf-16"),
    "binary-garbage": lambda: bytes(range(256)) * 4,
    "nul-bytes": lambda: json.dumps(GOOD).encode() + b"\n\x00\x00\x00\n",
    "deep-nesting": lambda: json.dumps(GOOD).encode() + b"\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "truncated-json": lambda: json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode()[:20],
}


@pytest.mark.parametrize("case", sorted(ENCODINGS))
def test_mixed_encodings_and_garbage_fail_the_import(checks, project, case):
    manifest = project / "media" / "m.jsonl"
    manifest.write_bytes(ENCODINGS[case]())
    result, before = _import(checks, project, manifest)
    checks.assert_clean_error(result, manifest, "line", job="label")
    checks.assert_unchanged(before, project)


def test_a_failed_first_import_leaves_no_store_behind(project, checks):
    manifest = project / "media" / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "x", "b": "gone.png"}) + "\n")
    new = project / "new.sqlite"
    result = checks.run_cli(["label", "--db", new, "import", manifest])
    checks.assert_clean_error(result, manifest, "gone.png", job="label")
    assert sorted(p.name for p in project.iterdir() if p.name.startswith("new")) == []


def test_a_utf8_bom_is_fine(project, checks):
    manifest = project / "media" / "m.jsonl"
    manifest.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert checks.run_cli(["label", "--db", project / "labels.sqlite", "import", manifest]).code == 0


@pytest.mark.parametrize("case", ["missing", "folder"])
def test_a_missing_manifest_is_named(project, case, checks):
    manifest = project / "media" / ("nowhere.jsonl" if case == "missing" else "")
    result, before = _import(checks, project, manifest)
    checks.assert_clean_error(result, manifest, job="label")
    checks.assert_unchanged(before, project)


@pytest.mark.parametrize("case", ["bad-bytes", "escaping-path", "unknown-annotator", "missing-column"])
def test_parquet_imports_are_all_or_nothing(project, made, case, checks):
    media = project / "media"
    table = media / "pp.parquet"
    good = png_bytes()
    rows = {"caption": ["c1", "c2"], "jpg_0": [good, good], "jpg_1": [good, good], "label_0": [1.0, 0.0]}
    extra = []
    if case == "bad-bytes":
        rows["jpg_1"] = [good, made["truncated-png"][1]]
    elif case == "escaping-path":
        rows["jpg_1"] = ["a.png", "../../../../../../etc/passwd"]
    elif case == "unknown-annotator":
        extra = ["--labels-as", "nobody"]
    else:
        del rows["label_0"]
    pd.DataFrame(rows).to_parquet(table)
    result, before = _import(checks, project, table, "--media-dir", project / "pm", *extra)
    checks.assert_clean_error(result, "nobody" if case == "unknown-annotator" else table, job="label")
    checks.assert_unchanged(before, project)
    assert _tasks(project / "labels.sqlite") == 1


# --- read-only jobs never create a store; export never writes an empty result -------------------------------------


@pytest.mark.parametrize("db_name", ["missing.sqlite", "labels.sqlit", "sub/labels.sqlite"])
@pytest.mark.parametrize("action", ["export", "serve"])
def test_read_only_jobs_refuse_a_missing_store(project, db_name, action, checks):
    before = checks.snapshot(project)
    args = ["label", "--db", project / db_name, action] + ([project / "exported.jsonl"] if action == "export" else [])
    result = checks.run_cli(args)
    checks.assert_clean_error(result, db_name.split("/")[-1], job="label")
    assert "no label store here" in result.err
    assert not (project / db_name).exists() and not (project / "sub").exists()
    checks.assert_unchanged(before, project)


def test_db_after_the_action_works_too(project, checks):
    out = project / "again.jsonl"
    assert checks.run_cli(["label", "export", out, "--db", project / "labels.sqlite"]).code == 0
    assert out.read_text().count("\n") == 1


@pytest.mark.parametrize("out_name", ["exported.jsonl", "pairs.parquet"])
def test_export_of_an_empty_store_keeps_the_existing_file(project, out_name, checks):
    empty = project / "empty.sqlite"
    LabelStore(empty).engine.dispose()
    (project / "pairs.parquet").write_bytes(b"earlier parquet bytes")
    before = checks.snapshot(project)
    result = checks.run_cli(["label", "--db", empty, "export", project / out_name])
    checks.assert_clean_error(result, "empty.sqlite", out_name, job="label")
    assert "holds no" in result.err and "kept" in result.err
    checks.assert_unchanged(before, project)


@pytest.mark.parametrize("out_name", ["labels.txt", "media", "labels"])
def test_export_to_a_wrong_target_is_refused(project, out_name, checks):
    before = checks.snapshot(project)
    result = checks.run_cli(["label", "--db", project / "labels.sqlite", "export", project / out_name])
    checks.assert_clean_error(result, out_name, job="label")
    checks.assert_unchanged(before, project)


def test_enroll_from_a_missing_store_is_an_error_not_a_new_store(project, checks):
    missing = project / "labelz.sqlite"
    result = checks.run_cli(["enroll", "--model", project / "no-model", "--user", "ann", "--store", missing])
    checks.assert_clean_error(result, "labelz.sqlite", job="enroll")
    assert not missing.exists()


def test_the_console_script_prints_no_traceback(project):
    """One case end to end through a real process: the message, exit 2, nothing else."""
    manifest = project / "media" / "m.jsonl"
    manifest.write_text(json.dumps({**GOOD, "b": "../../../../../../../../etc/passwd"}) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "mmpref.cli", "label", "--db", str(project / "labels.sqlite"), "import", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "m.jsonl" in run.stderr and "outside the media root" in run.stderr
