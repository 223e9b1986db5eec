"""The generic reward-model system, its scoring networks, metrics and feature data modules."""

from __future__ import annotations

from mmpref.reward.datamodule import ManifestFeatureDataModule, SyntheticPreferenceDataModule
from mmpref.reward.metrics import PairwiseCalibrationError, kendall_tau, pairwise_accuracy
from mmpref.reward.networks import MLPScorer
from mmpref.reward.synthetic import HiddenUtilityTask
from mmpref.reward.system import RewardModelSystem

__all__ = [
    "HiddenUtilityTask",
    "MLPScorer",
    "ManifestFeatureDataModule",
    "PairwiseCalibrationError",
    "RewardModelSystem",
    "SyntheticPreferenceDataModule",
    "kendall_tau",
    "pairwise_accuracy",
]
