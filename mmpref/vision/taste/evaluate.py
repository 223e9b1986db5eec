"""Evaluating personal scoring on users never seen in training: accuracy vs enrollment labels, next to the ceiling."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from mmpref.data.io import atomic_write
from mmpref.reward.metrics import PairwiseCalibrationError
from mmpref.reward.trainers import quick_trainer
from mmpref.vision.demo_data import SimulatedPopulation
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, enroll, predict_pairs
from mmpref.vision.taste.system import DemoTasteDataModule, PersonalTasteSystem

ENROLL_COUNTS = (0, 1, 2, 4, 8, 16, 32, 64)


def train_personal_model(
    data: DemoTasteDataModule, epochs: int = 25, rank: int = 8, hidden: int = 64, lr: float = 3e-3, seed: int = 0
) -> PersonalTasteModel:
    """Train the personal taste model on the data module's training users (CPU, a few seconds)."""
    L.seed_everything(seed, verbose=False)
    data.setup()
    model = PersonalTasteModel(data.embeddings.shape[1], data.hparams.num_train_users, rank=rank, hidden=hidden)
    system = PersonalTasteSystem(model, optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=1e-4))
    trainer = quick_trainer(epochs, num_sanity_val_steps=0)
    trainer.fit(system, data)
    return model.eval()


def train_default_model(data: DemoTasteDataModule, seed: int = 0) -> tuple[PersonalTasteModel, CodePrior, dict]:
    """The default path (:mod:`mmpref.vision.taste.train`): early stopping, learned prior, calibrated enrollment."""
    from mmpref.vision.taste.train import CalibrationUser, calibrate_enrollment, fit_taste_model

    data.setup()
    model, summary = fit_taste_model(data, data.hparams.num_train_users, seed=seed)
    prior, report = CodePrior.from_model(model), None
    emb = data.embeddings
    users = [
        CalibrationUser(
            emb[u.enroll.a], emb[u.enroll.b], torch.from_numpy(u.enroll.label),
            emb[u.test.a], emb[u.test.b], torch.from_numpy(u.test.label),
        )
        for u in data.validation_raters
    ]  # fmt: skip
    if users:
        prior, report = calibrate_enrollment(model, prior, users)
    return model, prior, {"training": summary, "calibration": report}


@torch.no_grad()
def evaluate_enrollment(
    model: PersonalTasteModel,
    data: DemoTasteDataModule,
    counts: Sequence[int] = ENROLL_COUNTS,
    prior: CodePrior | None = None,
) -> dict[str, Any]:
    """Enroll every held-out user from their first n labelled pairs and score their test pairs.

    For each n: personal accuracy against the users' noisy labels and against their true preference, the
    population model's accuracy (code = prior mean, no personal labels), the noise ceiling, the calibration error of
    the personal probabilities, the code's posterior uncertainty and the enrollment time.
    """
    model.eval()
    prior = prior if prior is not None else CodePrior.from_model(model)
    emb = data.embeddings
    rows = []
    for n in counts:
        correct, true_correct, pop_correct, seconds, spread = [], [], [], [], []
        calibration = PairwiseCalibrationError()
        for user in data.heldout:
            enroll_a, enroll_b = emb[user.enroll.a[:n]], emb[user.enroll.b[:n]]
            start = time.perf_counter()
            profile = enroll(model, prior, enroll_a, enroll_b, torch.from_numpy(user.enroll.label[:n]))
            seconds.append(time.perf_counter() - start)
            spread.append(profile.uncertainty)
            test = user.test
            prob = torch.from_numpy(predict_pairs(model, profile, emb[test.a], emb[test.b], prior.temperature))
            mean_code = torch.from_numpy(prior.mean).float()
            pop = torch.sigmoid(model.score(emb[test.a], mean_code) - model.score(emb[test.b], mean_code))
            label, truth = torch.from_numpy(test.label), torch.from_numpy(test.true_prob)
            decided = label != 0.5
            correct.append(((prob > 0.5) == (label > 0.5))[decided].float().mean().item())
            true_correct.append(((prob > 0.5) == (truth > 0.5)).float().mean().item())
            pop_correct.append(((pop > 0.5) == (label > 0.5))[decided].float().mean().item())
            calibration.update(prob, label)
        rows.append(
            {
                "enroll_labels": n,
                "personal_accuracy": float(np.mean(correct)),
                "personal_accuracy_vs_true_preference": float(np.mean(true_correct)),
                "population_accuracy": float(np.mean(pop_correct)),
                "personal_ece": float(calibration.compute()),
                "code_uncertainty": float(np.mean(spread)),
                "enroll_seconds_mean": float(np.mean(seconds)),
                "enroll_seconds_max": float(np.max(seconds)),
            }
        )
    ceiling = float(np.mean([SimulatedPopulation.noise_ceiling(u.test) for u in data.heldout]))
    return {"num_heldout_users": len(data.heldout), "noise_ceiling": ceiling, "curve": rows}


def plot_learning_curve(result: dict[str, Any], path: str | Path) -> Path:
    """Accuracy on held-out users vs number of enrollment labels, with the population model and the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    n = [max(r["enroll_labels"], 0.5) for r in curve]  # 0 labels drawn at 0.5 on the log axis
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [r["personal_accuracy"] for r in curve], "o-", label="personal model (noisy labels)")
    ax.plot(n, [r["personal_accuracy_vs_true_preference"] for r in curve], "s--", label="personal vs true preference")
    ax.plot(n, [r["population_accuracy"] for r in curve], "k:", label="population model")
    ax.axhline(result["noise_ceiling"], color="grey", lw=1, label=f"noise ceiling {result['noise_ceiling']:.3f}")
    ax.axhline(0.5, color="red", lw=0.5, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(r["enroll_labels"]) for r in curve])
    ax.set_xlabel("labelled pairs from the new user")
    ax.set_ylabel("pairwise accuracy on their other pairs")
    ax.set_title(f"Enrolling {result['num_heldout_users']} unseen users")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
