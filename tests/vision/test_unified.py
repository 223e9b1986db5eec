"""The unified reward model learns named dimensions from pairs, lists and ratings jointly, and motion from video."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpref.reward.datamodule import DictDataset
from mmpref.reward.metrics import pairwise_accuracy
from mmpref.vision.demo_data import load_demo_items
from mmpref.vision.encoders import EfficientNetLite0Encoder
from mmpref.vision.unified.demo import (
    IMAGE_DIMENSIONS,
    fit_unified,
    image_dimension_data,
    image_test_pairs,
    motion_pairs,
    pan_frames,
)
from mmpref.vision.unified.model import UnifiedRewardModel


def test_one_model_learns_three_dimensions_from_three_record_types():
    items = load_demo_items()
    order = np.random.default_rng(0).permutation(len(items.names))
    train_items, test_items = order[:360], order[360:]  # 120 images never seen in training
    model = UnifiedRewardModel(1280, IMAGE_DIMENSIONS, hidden=64)
    fit_unified(model, image_dimension_data(items, train_items), epochs=20)
    accuracy = {}
    with torch.no_grad():
        for dimension in IMAGE_DIMENSIONS:
            a, b, label = image_test_pairs(items, test_items, dimension)
            accuracy[dimension] = pairwise_accuracy(model.preference_probability(a, b, dimension), label).mean().item()
            # the other heads do not know this dimension as well: the dimensions are really separate
            others = [
                pairwise_accuracy(model.preference_probability(a, b, d), label).mean().item()
                for d in IMAGE_DIMENSIONS
                if d != dimension
            ]
            assert accuracy[dimension] > max(others) + 0.05, (dimension, accuracy[dimension], others)
    # Reference: a ridge probe fitted to the *true* property values of the training images (far more information
    # than preferences carry) shows how much of each property the frozen embeddings expose on unseen images.
    from sklearn.linear_model import RidgeCV

    from mmpref.vision.unified.demo import _PROPERTY_COLUMN

    for dimension in IMAGE_DIMENSIONS:
        column = items.standardized[:, _PROPERTY_COLUMN[dimension]]
        probe = RidgeCV(alphas=np.logspace(-1, 4, 12)).fit(items.embeddings[train_items], column[train_items])
        rng = np.random.default_rng(1)
        a, b = rng.choice(test_items, 1000), rng.choice(test_items, 1000)
        keep = a != b
        predicted = probe.predict(items.embeddings)
        probe_accuracy = ((predicted[a] > predicted[b]) == (column[a] > column[b]))[keep].mean()
        print(dimension, f"unified {accuracy[dimension]:.3f}", f"ridge probe on true values {probe_accuracy:.3f}")
        # pairs teach brightness, ranked lists saturation, 1-5 ratings warmth; chance is 0.5
        assert accuracy[dimension] >= 0.72
        assert accuracy[dimension] >= probe_accuracy - 0.05


@pytest.fixture(scope="module")
def pans():
    return pan_frames(EfficientNetLite0Encoder(), photos=16, steps=10)


def test_video_preference_that_depends_on_motion_beats_the_frame_mean(pans):
    train = DictDataset(**motion_pairs(pans, np.arange(12), n=600, seed=0))
    test = motion_pairs(pans, np.arange(12, 16), n=400, seed=1)  # photos never seen in training
    results = {}
    for pooling in ("temporal", "mean"):
        model = UnifiedRewardModel(1280, ("overall",), hidden=64, pooling=pooling)
        fit_unified(model, {"pairs": train}, epochs=15)
        with torch.no_grad():
            prob = model.preference_probability(test["frames_a"], test["frames_b"])
        results[pooling] = pairwise_accuracy(prob, test["label"]).mean().item()
    print(results)
    # Both clips of a pair hold the same frames: the frame-mean model scores them equally (exactly chance).
    assert results["mean"] == pytest.approx(0.5, abs=0.02)
    assert results["temporal"] >= 0.85
