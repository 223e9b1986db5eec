"""Shared checks of the bad-input suite: run a CLI job in-process, assert one clean error, snapshot output files.

Every case asserts the same contract (issue 21): exit code 2, the bad file's name in the message, no traceback on
stderr, and every pre-existing file of the watched folders byte-identical afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest


@dataclass
class CliResult:
    """What one in-process ``mmpref`` run returned and printed."""

    code: int
    out: str
    err: str


def run_cli(args: Sequence[str | os.PathLike]) -> CliResult:
    """Run ``mmpref.cli.main(args)`` in this process, capturing stdout and stderr; ``SystemExit`` becomes a code.

    An exception escaping ``main`` is not caught: it fails the test with its traceback, which is what it would
    print for a user.
    """
    from mmpref.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return CliResult(int(code), out.getvalue(), err.getvalue())


def assert_clean_error(result: CliResult, *names: str | os.PathLike, job: str | None = None) -> None:
    """Exit code 2, no traceback, each of ``names`` (file names, fields) in the message, and one ``mmpref`` line."""
    assert result.code == 2, f"exit code {result.code}, expected 2\nstdout: {result.out}\nstderr: {result.err}"
    assert "Traceback" not in result.err, result.err
    assert result.err.strip(), "no error message on stderr"
    prefix = f"mmpref {job}:" if job else "mmpref"
    lines = result.err.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    # one message; library log records (e.g. Lightning's "Seed set to 0") may come before it, never after it
    assert len(starts) == 1, f"expected one line starting with {prefix!r}: {result.err[:2000]}"
    message = "\n".join(lines[starts[0] :])
    for name in names:
        text = Path(name).name if isinstance(name, Path) else str(name)
        assert text in message, f"{text!r} not named in: {message[:2000]}"


def snapshot(*folders: str | os.PathLike) -> dict[str, bytes]:
    """The bytes of every file under ``folders`` (recursively; symlinks not followed), keyed by path."""
    files: dict[str, bytes] = {}
    for folder in folders:
        root = Path(folder)
        if root.is_file():
            files[str(root)] = root.read_bytes()
            continue
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    files[str(path)] = path.read_bytes()
    return files


def assert_unchanged(before: dict[str, bytes], *folders: str | os.PathLike) -> None:
    """Every file of ``before`` still exists, byte-identical (new files are allowed only if listed by the caller)."""
    after = snapshot(*folders)
    changed = [p for p, data in before.items() if after.get(p) != data]
    assert not changed, f"pre-existing files changed or removed: {changed}"


@pytest.fixture
def checks() -> SimpleNamespace:
    """The helpers above for test modules (tests/ is not a package, so they come as a fixture, not an import):
    ``checks.run_cli``, ``checks.assert_clean_error``, ``checks.snapshot``, ``checks.assert_unchanged``."""
    return SimpleNamespace(
        run_cli=run_cli, assert_clean_error=assert_clean_error, snapshot=snapshot, assert_unchanged=assert_unchanged
    )
