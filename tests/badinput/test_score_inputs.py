"""``mmpref score`` inputs (``collect_media``): symlink cycles, dangling links, .txt lists in cycles, odd list text.

The rule (docs/reliability.md): a broken input is an error, never skipped: a missing path, a dangling symlink, a
symlink loop (given, listed, or found in a scanned folder), a list that includes itself or another list in a cycle,
lists nested deeper than 32, a list that is not UTF-8. Each is one ``ScoringError`` naming the path (and the list
and line it came from); ``mmpref score`` exits 2 with it. Never a ``RecursionError``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, save_taste_model
from mmpref.vision.taste.scoring import ScoringError, collect_media


@pytest.fixture
def media(tmp_path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    for name, colour in {"red": (220, 30, 30), "blue": (30, 30, 220)}.items():
        Image.new("RGB", (32, 32), colour).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = PersonalTasteModel(1280, num_users=2, rank=3, hidden=8)
    return save_taste_model(
        model.eval(), CodePrior(np.zeros(3), np.eye(3)), "efficientnet-lite0-imagenet", tmp_path / "m"
    )


def _lists_in_a_cycle(root: Path, media: Path, n: int, relative: bool) -> Path:
    """``n`` lists: list_0 names red.png and list_1, ..., list_{n-1} names list_0 (n = 1: a list naming itself)."""
    for i in range(n):
        target = root / f"list_{(i + 1) % n}.txt"
        line = os.path.relpath(target, root) if relative else str(target)
        (root / f"list_{i}.txt").write_text(f"{media / 'red.png'}\n# a comment\n\n{line}\n")
    return root / "list_0.txt"


CYCLE_CASES = [(n, rel) for n in (1, 2, 3, 7) for rel in (False, True)]


@pytest.mark.parametrize(
    ("n", "relative"), CYCLE_CASES, ids=[f"{n}-lists-{'rel' if r else 'abs'}" for n, r in CYCLE_CASES]
)
def test_list_cycles_are_an_error_naming_the_lists(tmp_path, media, n, relative):
    first = _lists_in_a_cycle(tmp_path, media, n, relative)
    with pytest.raises(ScoringError, match="cycle") as info:
        collect_media([first])
    assert "list_0.txt" in str(info.value)


def test_a_list_reached_through_a_symlink_is_the_same_list(tmp_path, media):
    (tmp_path / "a.txt").write_text("alias.txt\n")
    (tmp_path / "alias.txt").symlink_to(tmp_path / "a.txt")
    with pytest.raises(ScoringError, match="cycle"):
        collect_media([tmp_path / "a.txt"])


def test_deep_chain_of_lists_is_refused_not_a_recursion_error(tmp_path, media):
    for i in range(200):
        (tmp_path / f"l{i}.txt").write_text(f"l{i + 1}.txt\n" if i < 199 else str(media / "red.png"))
    with pytest.raises(ScoringError, match="nested deeper than"):
        collect_media([tmp_path / "l0.txt"])
    assert collect_media([tmp_path / "l180.txt"]) == [media / "red.png"]  # a chain of 20 is fine


def test_diamond_of_lists_is_not_a_cycle(tmp_path, media):
    (tmp_path / "d.txt").write_text(str(media / "red.png"))
    (tmp_path / "b.txt").write_text("d.txt")
    (tmp_path / "c.txt").write_text("d.txt")
    (tmp_path / "a.txt").write_text("b.txt\nc.txt\n")
    assert collect_media([tmp_path / "a.txt"]) == [media / "red.png"] * 2


def _symlink_loop(folder: Path, length: int) -> Path:
    names = [folder / f"loop{i}.png" for i in range(length)]
    for i, name in enumerate(names):
        name.symlink_to(names[(i + 1) % length])
    return names[0]


BROKEN = ["dangling", "dangling-relative", "loop-1", "loop-2", "loop-5", "dir-loop", "missing", "nul-byte", "too-long"]


def _make_broken(kind: str, where: Path, media: Path) -> str:
    """Create one broken entry of ``kind`` in ``where``; returns the name (or path text) to give or list."""
    if kind == "dangling":
        (where / "gone.png").symlink_to(where / "does-not-exist.png")
        return "gone.png"
    if kind == "dangling-relative":
        (where / "gone.jpg").symlink_to("../nowhere/x.jpg")
        return "gone.jpg"
    if kind.startswith("loop-"):
        return _symlink_loop(where, int(kind.split("-")[1])).name
    if kind == "dir-loop":
        (where / "again").symlink_to(where, target_is_directory=True)
        return "again"
    if kind == "missing":
        return "never-made.png"
    if kind == "nul-byte":
        return "bad\x00name.png"
    return "x" * 5000 + ".png"


# a folder scan only meets entries that exist in the folder: no missing, NUL or over-long names there
BROKEN_CASES = [(k, g) for g in ("argument", "in-list", "in-folder") for k in BROKEN]
BROKEN_CASES = [(k, g) for k, g in BROKEN_CASES if g != "in-folder" or k not in ("missing", "nul-byte", "too-long")]


@pytest.mark.parametrize(("kind", "given"), BROKEN_CASES, ids=[f"{g}-{k}" for k, g in BROKEN_CASES])
def test_broken_entries_are_an_error_naming_them(tmp_path, media, kind, given):
    name = _make_broken(kind, media, media)
    if given == "argument":
        inputs = [media / "red.png", media / name]
    elif given == "in-list":
        (media / "list.txt").write_text(f"red.png\n{name}\n")
        inputs = [media / "list.txt"]
    else:
        inputs = [media]
    with pytest.raises(ScoringError) as info:
        collect_media(inputs)
    message = str(info.value)
    assert name[:40].replace("\x00", "") in message.replace("\\x00", "").replace("\x00", "")
    if given == "in-list":
        assert "list.txt line 2" in message


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe r\x00e\x00d\x00", b"red.png\n\x80\x81\x82.png\n", "red.png\nbl\u00e9.png\n".encode("latin-1")],
    ids=["utf16", "invalid-bytes", "latin-1"],
)
def test_non_utf8_lists_name_the_list_and_line(tmp_path, media, content):
    (media / "list.txt").write_bytes(content)
    with pytest.raises(ScoringError, match=r"list\.txt: line \d+ is not UTF-8"):
        collect_media([media / "list.txt"])


def test_utf8_bom_and_crlf_lists_are_read(tmp_path, media):
    (media / "list.txt").write_bytes(b"\xef\xbb\xbfred.png\r\nblue.png\r\n")
    assert collect_media([media / "list.txt"]) == [media / "red.png", media / "blue.png"]


def test_empty_list_and_empty_folder(tmp_path, media):
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ScoringError, match="nothing to score"):
        collect_media([tmp_path / "empty.txt"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ScoringError, match="nothing"):
        collect_media([tmp_path / "nothing"])


@pytest.mark.parametrize("kind", ["loop-2", "dangling", "dir-loop", "list-cycle", "missing"])
def test_score_cli_exits_2_and_writes_nothing(tmp_path, media, model_dir, checks, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("path,score\nold,1\n")
    if kind == "list-cycle":
        target = _lists_in_a_cycle(tmp_path, media, 2, relative=True)
        named = "list_0.txt"
    else:
        named = _make_broken(kind, media, media)
        target = media / named if kind != "dir-loop" else media
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["score", target, "--model", model_dir, "--csv", out / "scores.csv"])
    checks.assert_clean_error(result, named, job="score")
    checks.assert_unchanged(before, tmp_path)


@st.composite
def _list_graphs(draw):  # noqa: ANN001, ANN202
    n = draw(st.integers(1, 6))
    edges = {i: draw(st.lists(st.integers(0, n - 1), max_size=3)) for i in range(n)}
    return n, edges


def _reaches_a_cycle(edges: dict[int, list[int]]) -> bool:
    state: dict[int, int] = {}

    def visit(node: int) -> bool:  # 1 = on the stack, 2 = done
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1 or (nxt not in state and visit(nxt)):
                return True
        state[node] = 2
        return False

    return visit(0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=_list_graphs())
def test_any_graph_of_lists_is_expanded_or_refused_as_a_cycle(tmp_path_factory, graph):
    n, edges = graph
    root = tmp_path_factory.mktemp("lists")
    Image.new("RGB", (8, 8)).save(root / "x.png")
    for i in range(n):
        (root / f"l{i}.txt").write_text("x.png\n" + "".join(f"l{j}.txt\n" for j in edges[i]))
    if _reaches_a_cycle(edges):
        with pytest.raises(ScoringError, match="cycle"):
            collect_media([root / "l0.txt"])
    else:
        found = collect_media([root / "l0.txt"])
        assert found and set(found) == {root / "x.png"}
