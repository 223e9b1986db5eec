"""Tests run on the CPU: mmpref's jobs default to ``accelerator="auto"``, so CUDA is hidden unless ``-m gpu`` asks."""

from __future__ import annotations

import os


def pytest_configure(config) -> None:
    """Hide CUDA from the run (before torch initialises it) unless the selected tests are the ``gpu`` ones."""
    if "gpu" not in (config.getoption("markexpr", "") or "").replace("not gpu", ""):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
