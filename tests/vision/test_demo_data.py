from __future__ import annotations

import numpy as np

from mmpref.vision.demo_data import (
    ANIMAL_CLASSES,
    SimulatedPopulation,
    load_demo_items,
    make_demo_image,
    measure_properties,
)
from mmpref.vision.encoders import EfficientNetLite0Encoder


def test_shipped_items_are_reproduced_by_the_generator():
    items = load_demo_items()
    assert items.embeddings.shape == (480, 1280) and items.properties.shape == (480, 5)
    encoder = EfficientNetLite0Encoder()
    for index in (0, 7, 300):
        name, image = make_demo_image(index, items.seed)
        assert name == items.names[index]
        features, probs = encoder.embed_and_classify([image])
        # float16 storage: relative error ~1e-3 of each feature's magnitude
        np.testing.assert_allclose(items.embeddings[index], features[0], rtol=5e-3, atol=5e-3)
        props = np.append(measure_properties(image), probs[0][ANIMAL_CLASSES].sum())
        np.testing.assert_allclose(items.properties[index], props, rtol=1e-4, atol=1e-4)


def test_simulated_raters_follow_their_taste():
    items = load_demo_items()
    population = SimulatedPopulation(items.standardized, num_users=8, beta=1.5, seed=1)
    for user in range(8):
        pairs = population.pairs(user, 400)
        truth = pairs.true_prob > 0.5
        agree = ((pairs.label > 0.5) == truth).mean()
        ceiling = SimulatedPopulation.noise_ceiling(pairs)
        assert abs(agree - ceiling) < 0.06  # sampled labels agree with the true preference at the ceiling rate
        ratings = population.ratings(user, np.arange(100))
        assert set(np.unique(ratings)) <= {1, 2, 3, 4, 5}
        # ratings rise with the user's utility
        assert np.corrcoef(ratings, population.utility(user)[:100])[0, 1] > 0.5
