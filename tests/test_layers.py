"""The house's one-way dependencies (docs/architecture.md): ``vision`` and ``control`` never import each other, and
the lower layers (``losses``, ``data``, ``reward``) import none of the higher ones.

Read from the source with ``ast`` (every ``import`` and ``from ... import``, lazy ones inside functions included), so
an import hidden in a function body cannot slip past as it would at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmpref"
HIGHER = {"vision", "control", "feedback", "cli"}
FORBIDDEN = {
    "losses": HIGHER | {"data", "reward", "recipe"},
    "data": HIGHER | {"reward", "recipe"},
    "reward": HIGHER,
    "vision": {"control", "feedback", "cli"},
    "control": {"vision", "cli"},
}


def imported_parts(path: Path) -> set[str]:
    """The second dotted part of every ``mmpref.X...`` module that ``path`` imports (relative imports resolved)."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").parts
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y, inside mmpref
                base = list(module[: len(module) - node.level])
                names = [".".join(base + ([node.module] if node.module else []))]
            elif node.module:
                names = [node.module]
        for name in names:
            dotted = name.split(".")
            if dotted[0] == "mmpref" and len(dotted) > 1:
                parts.add(dotted[1])
    return parts


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer):
    offences = [
        f"{path.relative_to(PACKAGE.parent)} imports mmpref.{part}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for part in sorted(imported_parts(path) & FORBIDDEN[layer])
    ]
    assert not offences, "\n".join(offences)


def test_the_reader_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    # the check must be able to fail: a lazy import inside a function and a relative one both count
    fake = PACKAGE / "losses" / "pairwise.py"
    source = "def f():\n    from mmpref.vision import media\n\nfrom ..control import envs\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else "")
    assert imported_parts(fake) == {"vision", "control"}
