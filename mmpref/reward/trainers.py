"""Small, quiet CPU trainers for demos, tests and benchmarks (real runs use ``mmpref fit`` and its recipes)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L


def quiet_lightning() -> None:
    """Silence Lightning's banner lines and hints (GPU/TPU availability, worker counts, tips)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def quick_trainer(max_epochs: int, **overrides: Any) -> L.Trainer:
    """A CPU ``Trainer`` with no logger, checkpoints, progress bar or model summary; ``overrides`` win."""
    settings: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(settings | overrides))
