"""The ground the readers stand on: :class:`DataError`, atomic writes and media-path containment.

The readers themselves are in :mod:`mmpref.data.manifest` (JSONL) and :mod:`mmpref.data.tables` (Parquet, CSV).

Readers check everything before returning anything, and raise one :class:`DataError` naming the file, the row
(1-based line for JSONL, 0-based row index for Parquet, as pandas shows it), the field and the fix; several
problems are listed together (up to 20). Writers validate first and write atomically (a temporary file in the
same folder, then ``os.replace``), so a failed write leaves the old file untouched.

JSONL manifest lines (relative paths resolve against the manifest's folder)::

    {"type": "pair", "id": "p1", "a": "img/1.png", "b": "img/2.png", "label": 1.0, "prompt": "a cat"}
    {"type": "list", "id": "l1", "items": ["x.png", "y.png", "z.png"], "scores": [3, 1, 2]}
    {"type": "rating", "id": "r1", "item": "x.png", "rating": 4, "scale": [1, 5], "user_id": "u7"}
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from mmpref.data.media import MediaError, max_pixels, resolve_media_path
from mmpref.data.media import check_media as _check_media_file
from mmpref.data.records import PreferenceList, PreferencePair, Rating
from mmpref.errors import MmprefError

Record = PreferencePair | PreferenceList | Rating
TiePolicy = Literal["keep", "drop"]
_MAX_LISTED = 20
_ADD_RECORDS = '; add one JSON object per line, e.g. {"type": "pair", "a": "1.png", "b": "2.png", "label": 1}'


class DataError(MmprefError):
    """Bad input data: the message names the file, the rows, the fields and how to fix them."""

    def __init__(self, path: str | Path, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:_MAX_LISTED])
        more = len(self.problems) - _MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{self.path}: {len(self.problems)} problem(s), nothing was loaded:\n{shown}{tail}")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path`` and move it over ``path`` only when the block succeeds.

    The data is flushed and fsynced before the rename, so a crash leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only when the block succeeds.

    A failure leaves ``path`` as it was (the temporary folder is removed); an existing ``path`` is swapped out by two
    renames, so a reader sees the old folder or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


MediaRoot = str | Path | Sequence[str | Path] | None


def _roots(media_root: MediaRoot, default: Path) -> list[Path]:
    """The folders media may resolve into: ``media_root`` (one or several) if given, else ``default``."""
    if media_root is None:
        return [default]
    if isinstance(media_root, (str, Path)):
        return [Path(media_root)]
    return [Path(r) for r in media_root]


class _MediaChecker:
    """Resolves and checks media paths for one file being read; each distinct file is checked once."""

    def __init__(self, base: Path, roots: list[Path], check: bool, images_only: bool = False):
        self.base, self.roots, self.check, self.images_only = base, roots, check, images_only
        self.seen: dict[Path, str | None] = {}
        if check:
            max_pixels()  # a bad MMPREF_MAX_PIXELS is one MediaError now, not one problem per file

    def __call__(self, value: str, where: str, problems: list[str]) -> str:
        """The resolved path (as text); a problem (containment, missing, not media) is appended to ``problems``."""
        try:
            path = resolve_media_path(value, self.base, self.roots)
        except MediaError as err:
            problems.append(f"{where} = {value!r}: {err.reason}")
            return value
        if path not in self.seen:
            self.seen[path] = self._problem(path)
        if self.seen[path]:
            problems.append(f"{where}: file {str(path)!r} is {self.seen[path]}")
        return str(path)

    def _problem(self, path: Path) -> str | None:
        try:
            exists = path.exists()
        except OSError as err:  # e.g. a name longer than the file system allows
            return f"an unusable path ({err.strerror or err}); fix the path"
        if not exists:
            return f"missing (file not found); fix the path (relative paths resolve against {str(self.base)!r})"
        if not self.check:
            return None
        try:
            kind = _check_media_file(path).kind
        except MediaError as err:
            return err.reason
        if self.images_only and kind != "image":
            return f"a {kind}, not an image; this column holds images"
        return None
