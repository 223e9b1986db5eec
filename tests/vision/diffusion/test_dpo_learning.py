"""Slow: Diffusion-DPO on the shipped digits model learns a taste it only sees through pairs."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_dpo_shifts_held_out_samples_towards_the_taste():
    from mmpref.vision.diffusion.base import DEFAULT_ASSET, load_diffusion
    from mmpref.vision.diffusion.classifier import load_classifier
    from mmpref.vision.diffusion.digits import HELD_OUT_CLASSES, ink_taste
    from mmpref.vision.diffusion.evaluate import BaseSamples, evaluate_against_base
    from mmpref.vision.diffusion.train import DPOConfig, train_dpo

    torch.set_num_threads(1)
    model = load_diffusion()
    classifier = load_classifier(DEFAULT_ASSET / "classifier.safetensors")
    base = BaseSamples(model, classes=HELD_OUT_CLASSES, per_prompt=30)
    system, report = train_dpo(model, DPOConfig(per_prompt=25, steps_per_round=130))
    result = evaluate_against_base(model, system, base, ink_taste, classifier, HELD_OUT_CLASSES)
    held = result["held_out"]
    # chance is 50 % for the unpaired rate; the default run measures far above this floor (docs/benchmarks)
    assert held["unpaired_win_rate"] >= 0.6, held
    assert held["shift_sd"] > 0.3, held
    assert result["fidelity_drop_points"] <= 10, result
    assert report["rounds"][0]["collapsed_at"] is None
