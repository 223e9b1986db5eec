from __future__ import annotations

import pytest
import torch

from mmpref.reward import PairwiseCalibrationError, kendall_tau, pairwise_accuracy


def test_pairwise_accuracy_counts_ties_half():
    prob = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.3])
    label = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0])
    assert pairwise_accuracy(prob, label).tolist() == [1.0, 0.0, 0.5, 0.5, 1.0]


def test_calibration_error_by_hand():
    metric = PairwiseCalibrationError(n_bins=5)  # bins of width 0.1 over confidence [0.5, 1]
    # Two pairs in bin [0.9, 1.0): confidence 0.95 each, one right one wrong -> |0.95 − 0.5| = 0.45, weight 2/4.
    # Two pairs in bin [0.7, 0.8): p = 0.25 predicts b (confidence 0.75), label 0 -> correct 1; p = 0.75, label 1
    # -> correct 1: |0.75 − 1| = 0.25, weight 2/4.  ECE = 0.5·0.45 + 0.5·0.25 = 0.35.
    metric.update(torch.tensor([0.95, 0.95, 0.25, 0.75]), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert metric.compute().item() == pytest.approx(0.35)
    # A perfectly calibrated predictor on soft labels has zero error.
    calibrated = PairwiseCalibrationError(n_bins=10)
    p = torch.tensor([0.62, 0.81, 0.3])
    calibrated.update(p, p)
    assert calibrated.compute().item() == pytest.approx(0.0, abs=1e-7)


def test_kendall_tau_by_hand():
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]])
    targets = torch.tensor([[3.0, 2.0, 1.0]]).expand(3, 3)
    # identical order: 1; reversed: −1; [1, 3, 2] vs [3, 2, 1]: one concordant, two discordant pairs: −1/3
    torch.testing.assert_close(kendall_tau(scores, targets), torch.tensor([1.0, -1.0, -1 / 3]))
    mask = torch.tensor([[True, True, False]] * 3)
    torch.testing.assert_close(kendall_tau(scores, targets, mask), torch.tensor([1.0, -1.0, -1.0]))
