"""The Trainer settings every mmpref job's recipe carries, and small quiet trainers built from them.

``mmpref fit`` configures its Trainer through LightningCLI; mmpref's own jobs train through :func:`quick_trainer`
(the PbRL reward updates, BC, CPL, peeling's reward fits...), which takes a :class:`TrainerSettings`: a recipe's
``trainer:`` group, ``--trainer.accelerator cpu`` on the command line.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L


@dataclass
class TrainerSettings:
    """Where and how a job's Lightning training runs (the Trainer arguments of the same names).

    Args:
        accelerator: ``"auto"`` (a GPU when there is one, else the CPU), ``"cpu"``, ``"gpu"``/``"cuda"``, ``"mps"``.
        devices: devices per fit; 1 by default because mmpref's own jobs fit many small models in a loop, where
            several devices would cost a process launch each time.
        precision: Lightning's precision, e.g. ``"32-true"`` (the default: float32, CPU-runnable), ``"bf16-mixed"``.
        strategy: Lightning's strategy (``"auto"``; e.g. ``"ddp"`` with several devices).
        logger: keep Lightning's default logger (metrics under ``root_dir``/lightning_logs); off by default.
        root_dir: the Trainer's ``default_root_dir`` (None: the working directory).
        quiet: no progress bar, model summary nor Lightning's banner lines.
    """

    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "32-true"
    strategy: str = "auto"
    logger: bool = False
    root_dir: str | None = None
    quiet: bool = True

    @classmethod
    def of(cls, value: TrainerSettings | dict[str, Any] | None) -> TrainerSettings:
        """Settings from a mapping (a recipe read without jsonargparse, a checkpoint's JSON); None: the defaults."""
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls(**value)

    def trainer_kwargs(self) -> dict[str, Any]:
        """The ``lightning.Trainer`` arguments these settings stand for."""
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "precision": self.precision,
            "strategy": self.strategy,
            "logger": self.logger,
            "default_root_dir": self.root_dir,
            "enable_progress_bar": not self.quiet,
            "enable_model_summary": not self.quiet,
        }


def quiet_lightning() -> None:
    """Silence Lightning's banner lines and hints (GPU/TPU availability, worker counts, tips)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def quick_trainer(max_epochs: int, settings: TrainerSettings | None = None, **overrides: Any) -> L.Trainer:
    """A quiet ``Trainer`` on ``settings``, without checkpoints; ``overrides`` (any Trainer argument) win.

    Jobs pass their recipe's settings (accelerator ``"auto"`` by default). Without settings, a library call stays on
    the CPU as before: code that calls it outside a job has not said it is ready for another device.
    """
    settings = settings or TrainerSettings(accelerator="cpu")
    if settings.quiet:
        quiet_lightning()
    kwargs = settings.trainer_kwargs() | {"max_epochs": max_epochs, "enable_checkpointing": False}
    return L.Trainer(**(kwargs | overrides))
