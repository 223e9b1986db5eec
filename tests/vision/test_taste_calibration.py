"""A cohort's temperature from its raters' enrollment pairs (leave-one-out), on a model whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpref.reward.metrics import PairwiseCalibrationError
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, enroll, predict_pairs
from mmpref.vision.taste.train import cohort_temperature, leave_one_out_moments


def _cohort(true_temperature: float, raters: int = 30, pairs: int = 8, seed: int = 0):
    """Raters with codes from the prior whose labels are Bradley-Terry on the model's margin divided by T_true."""
    torch.manual_seed(0)
    model = PersonalTasteModel(16, num_users=1, rank=3, hidden=8, dropout=0.0).eval()
    with torch.no_grad():
        model.population.normal_(0, 1.0)
        model.basis.normal_(0, 1.0)
    items = torch.randn(60, 16)
    prior = CodePrior(np.zeros(3), np.eye(3), 1.0)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(raters):
        code = torch.from_numpy(rng.standard_normal(3)).float()
        a, b = rng.integers(0, 60, pairs + 100), rng.integers(0, 60, pairs + 100)
        with torch.no_grad():
            margin = (model.score(items[a], code) - model.score(items[b], code)).double().numpy()
        label = (rng.random(len(a)) < 1 / (1 + np.exp(-margin / true_temperature))).astype(np.float32)
        out.append((items[a], items[b], torch.from_numpy(label)))
    return model, prior, out, pairs


@pytest.mark.parametrize("true_temperature", [1.0, 3.0])
def test_cohort_temperature_recovers_how_noisy_the_raters_are(true_temperature):
    model, prior, raters, n = _cohort(true_temperature)
    enrollment = [(a[:n], b[:n], y[:n]) for a, b, y in raters]
    fitted, report = cohort_temperature(model, prior, enrollment)
    assert report["predictions"] == 30 * n
    # within a factor of 1.6 of the truth (the prior T is 1, so for T_true = 3 the raters' own pairs must move it)
    assert true_temperature / 1.6 < fitted < true_temperature * 1.6, fitted
    # and the held-out pairs' calibration is better at the fitted T than at the prior's whenever they differ a lot
    eces = {}
    for t in (prior.temperature, fitted):
        metric = PairwiseCalibrationError()
        for a, b, y in raters:
            profile = enroll(model, prior, a[:n], b[:n], y[:n])
            metric.update(torch.from_numpy(predict_pairs(model, profile, a[n:], b[n:], t)), y[n:])
        eces[t] = float(metric.compute())
    if true_temperature == 3.0:
        assert eces[fitted] < eces[prior.temperature] - 0.05, eces


def test_too_few_enrollment_pairs_keep_the_models_temperature():
    model, prior, raters, _ = _cohort(3.0, raters=4, pairs=8)
    fitted, report = cohort_temperature(model, prior, [(a[:8], b[:8], y[:8]) for a, b, y in raters])
    assert fitted == prior.temperature and report["predictions"] == 32  # < 40
    fitted, report = cohort_temperature(model, prior, [(a[:4], b[:4], y[:4]) for a, b, y in raters] * 20)
    assert fitted == prior.temperature and report["predictions"] == 0  # raters with < 8 pairs are not used
    m, v = leave_one_out_moments(model, prior, *(x[:10] for x in raters[0]))
    assert m.shape == v.shape == (10,) and (v >= 0).all()
