"""The personal-scoring demo on embedded defaults: train, enroll an unseen person from 8 labelled pairs, score.

1. Train the personal taste model on 60 simulated raters' pairs and ratings over the shipped demo images.
2. Evaluate enrollment on 20 raters never seen in training (accuracy vs 0-64 labels, learning-curve plot).
3. Save the model folder, write real image files for one held-out person's 8 labelled pairs and a folder of 24
   new images, enroll that person *through the files* (encoder + cache) and score the folder: a sorted table,
   CSV, and a contact sheet; the person's hidden true ranking is reported beside it (Kendall's τ).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmpref.data import PreferencePair, write_jsonl_manifest
from mmpref.data.io import atomic_write
from mmpref.reward.metrics import kendall_tau
from mmpref.reward.trainers import quiet_lightning
from mmpref.vision.demo_data import make_demo_image
from mmpref.vision.taste.evaluate import (
    evaluate_enrollment,
    plot_learning_curve,
    train_default_model,
    train_personal_model,
)
from mmpref.vision.taste.model import CodePrior, save_taste_model
from mmpref.vision.taste.scoring import TasteScorer, contact_sheet, format_table, write_table
from mmpref.vision.taste.system import DemoTasteDataModule


def run_taste_demo(
    out_dir: str | Path = "runs/demo/taste", epochs: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Run the whole demo; returns its figures and writes them under ``out_dir``.

    ``epochs`` = None trains by the default path (early stopping on validation loss, calibrated enrollment); a
    number trains exactly that many epochs without calibration.
    """
    quiet_lightning()
    out = Path(out_dir)
    data = DemoTasteDataModule(seed=seed)
    if epochs:  # a fixed epoch count (the former recipe), no calibration
        model = train_personal_model(data, epochs=epochs, seed=seed)
        prior = CodePrior.from_model(model)
    else:  # the default path: early stopping, prior strength and temperature from 10 validation raters
        model, prior, _ = train_default_model(data, seed=seed)
    curve = evaluate_enrollment(model, data, prior=prior)
    plot_learning_curve(curve, out / "learning_curve.png")
    model_dir = save_taste_model(model, prior, "efficientnet-lite0-imagenet", out / "model")

    # One unseen person: their first 8 labelled pairs, as real files, then 24 new images to score for them.
    person = data.heldout[0]
    images = out / "images"
    labels = []
    for k in range(8):
        a, b = int(person.enroll.a[k]), int(person.enroll.b[k])
        paths = []
        for index in (a, b):
            name, image = make_demo_image(index, data.items.seed)
            path = images / "labelled" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            paths.append(str(path.relative_to(out)))  # manifest paths resolve against the manifest's folder
        labels.append(
            PreferencePair(
                id=f"pair{k}", a=paths[0], b=paths[1], label=float(person.enroll.label[k]), user_id="person-0"
            )
        )
    write_jsonl_manifest(labels, out / "person-0-labels.jsonl")
    rng = np.random.default_rng(seed)
    to_score = rng.choice(len(data.items.names), 24, replace=False)
    for index in to_score:
        name, image = make_demo_image(int(index), data.items.seed)
        (images / "to_score").mkdir(parents=True, exist_ok=True)
        image.save(images / "to_score" / f"{name}.png")

    scorer = TasteScorer(model_dir)
    from mmpref.data import read_jsonl_manifest

    profile = scorer.enroll_from_records("person-0", read_jsonl_manifest(out / "person-0-labels.jsonl"))
    paths = sorted((images / "to_score").glob("*.png"))
    personal = scorer.score(paths, "person-0")
    population = scorer.score(paths, None)
    truth = {f"{data.items.names[i]}.png": float(data.population.utility(person.user)[i]) for i in to_score}

    def tau(items):
        scores = torch.tensor([[it.score for it in items]])
        return float(kendall_tau(scores, torch.tensor([[truth[it.path.name] for it in items]]))[0])

    write_table(personal, out / "person-0-scores.csv")
    contact_sheet(
        personal,
        out / "person-0-contact-sheet.png",
        title=f"person-0 (taste group {data.population.group_names[data.population.group_of[person.user]]}), "
        "enrolled from 8 pairs: best first",
    )
    by_n = {row["enroll_labels"]: row for row in curve["curve"]}
    figures = {
        "heldout_users": curve["num_heldout_users"],
        "noise_ceiling": curve["noise_ceiling"],
        "accuracy_8_labels_personal": by_n[8]["personal_accuracy"],
        "accuracy_8_labels_population": by_n[8]["population_accuracy"],
        "ece_8_labels_personal": by_n[8]["personal_ece"],
        "enroll_seconds_max": max(r["enroll_seconds_max"] for r in curve["curve"]),
        "person0_kendall_tau_personal": tau(personal),
        "person0_kendall_tau_population": tau(population),
        "person0_code_uncertainty": profile.uncertainty,
        "curve": curve["curve"],
    }
    with atomic_write(out / "metrics.json", "w") as handle:
        json.dump(figures, handle, indent=2)
    figures["table"] = format_table(personal, limit=10)
    return figures
