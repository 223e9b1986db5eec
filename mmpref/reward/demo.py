"""The reward-model demo: learn a hidden utility from noisy preferences with several losses of the core.

Runs on embedded defaults (no files needed): synthetic items with a hidden linear utility, noisy Bradley-Terry
pairs and Plackett-Luce lists (:class:`~mmpref.reward.datamodule.SyntheticPreferenceDataModule`). For each loss it
reports validation accuracy on noisy labels next to the noise ceiling, agreement with the hidden utility's order on
held-out pairs, and the expected calibration error against the noisy labels; it writes ``metrics.json``,
``metrics.md`` and a reliability diagram ``reliability.png``.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from tqdm.auto import tqdm

from mmpref.data.io import atomic_write
from mmpref.reward.datamodule import SyntheticPreferenceDataModule
from mmpref.reward.metrics import PairwiseCalibrationError
from mmpref.reward.networks import MLPScorer
from mmpref.reward.system import RewardModelSystem
from mmpref.reward.trainers import quick_trainer, quiet_lightning

logger = logging.getLogger(__name__)

# loss name -> the training data it is shown with (pairs for pairwise losses, ranked lists for listwise ones)
DEMO_LOSSES: dict[str, str] = {"bradley_terry": "pairs", "plackett_luce": "lists", "ranklist": "lists"}


def train_one(
    loss: str, kind: str, epochs: int = 15, seed: int = 0, num_features: int = 16, lr: float = 3e-3
) -> dict[str, Any]:
    """Train one reward model on the synthetic task and measure it; returns the metrics and the reliability bins."""
    L.seed_everything(seed, verbose=False)
    # A list of K = 8 carries K − 1 = 7 independent comparisons: 1,000 lists hold about as much as 7,000 pairs.
    data = SyntheticPreferenceDataModule(
        num_features=num_features, kind=kind, num_train=7000 if kind == "pairs" else 1000, seed=seed
    )
    system = RewardModelSystem(
        MLPScorer(num_features, hidden=[64]), loss=loss, optimizer=lambda p: torch.optim.AdamW(p, lr=lr)
    )
    trainer = quick_trainer(epochs)
    start = time.perf_counter()
    trainer.fit(system, data)
    seconds = time.perf_counter() - start
    val = trainer.validate(system, data, verbose=False)[0]
    test = trainer.test(system, data, verbose=False)[0]
    calibration = PairwiseCalibrationError(10)
    with torch.no_grad():
        batch = data.val_set.tensors
        calibration.update(system.preference_probability(batch["x_a"], batch["x_b"]), batch["label"])
    confidence, correct, count = calibration.reliability()
    return {
        "loss": loss,
        "train_data": kind,
        "val_accuracy_noisy_labels": val["val/accuracy"],
        "noise_ceiling": data.noise_ceiling,
        "test_agreement_with_hidden_utility": test["test/accuracy"],
        "val_ece": val["val/ece"],
        "train_seconds": seconds,
        "reliability": {"confidence": confidence.tolist(), "accuracy": correct.tolist(), "count": count.tolist()},
    }


def _plot_reliability(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0.5, 1.0], [0.5, 1.0], "k--", lw=1, label="perfect calibration")
    for result in results:
        rel = result["reliability"]
        points = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"], strict=True) if n > 0]
        ax.plot(*zip(*points, strict=True), "o-", label=f"{result['loss']} (ECE {result['val_ece']:.3f})")
    ax.set_xlabel("predicted P(preferred side wins)")
    ax.set_ylabel("observed frequency on noisy validation labels")
    ax.set_title("Reliability of the learned reward models")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def format_table(results: list[dict[str, Any]]) -> str:
    """The demo's results as a markdown table."""
    lines = [
        "| loss | trained on | val accuracy (noisy labels) | noise ceiling | agreement with hidden utility | val ECE "
        "| train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['loss']} | {r['train_data']} | {r['val_accuracy_noisy_labels']:.3f} | {r['noise_ceiling']:.3f} "
            f"| {r['test_agreement_with_hidden_utility']:.3f} | {r['val_ece']:.3f} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def run_reward_demo(out_dir: str | Path = "runs/demo", epochs: int = 15, seed: int = 0) -> list[dict[str, Any]]:
    """Train and evaluate one reward model per demo loss; write metrics.json, metrics.md and reliability.png."""
    quiet_lightning()
    out = Path(out_dir)
    results = [
        train_one(loss, kind, epochs=epochs, seed=seed)
        for loss, kind in tqdm(DEMO_LOSSES.items(), desc="reward models", unit="loss")
    ]
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    with atomic_write(out / "metrics.json", "w") as handle:
        json.dump({"machine": machine, "epochs": epochs, "seed": seed, "results": results}, handle, indent=2)
    with atomic_write(out / "metrics.md", "w") as handle:
        handle.write(f"# mmpref reward-model demo\n\nmachine: {machine}\n\n{format_table(results)}\n")
    _plot_reliability(results, out / "reliability.png")
    return results
