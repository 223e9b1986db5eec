"""The base class of every error mmpref raises about a user's input (files, folders, recipes, stores).

Each reader raises a subclass (``DataError``, ``MediaError``, ``RecipeError``, ``StoreError``, ``ScoringError``,
``PipelineError``, ``RecordError``, ``ModelFolderError``, ``RewardError``) whose message names the file, the record or
field, and the fix. ``mmpref.cli.main`` catches this one class, prints ``mmpref <job>: <message>`` and exits 2, so a
job never shows a traceback for bad input, while any other exception (a bug) still does. It derives from ``ValueError``
so code written against the older per-module errors keeps working. This module imports nothing, so any module may use
it.
"""

from __future__ import annotations

from pathlib import Path


class MmprefError(ValueError):
    """Bad user input: the message says which file, which record or field, and what to do about it."""


class ModelFolderError(MmprefError):
    """A model folder (or model file) that cannot be loaded: the message names the file and how to rebuild it."""

    def __init__(self, path: str | Path, problem: str, fix: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}; {fix}")
