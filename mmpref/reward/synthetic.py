"""Synthetic preference data with a known answer: items with features, a hidden linear utility, noisy labels.

Items are x ~ N(0, I_D); the hidden utility is u(x) = w·x with ‖w‖ = ``utility_scale``. Labels are drawn as a
Bradley-Terry rater would give them: P(a ≻ b) = σ(u(a) − u(b)), and ranked lists are sampled from the matching
Plackett-Luce model (Gumbel-max: sort u + Gumbel noise). Everything comes from one seeded ``numpy`` generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # σ(x), free of overflow warnings


@dataclass(frozen=True)
class PairArrays:
    """Pairs as arrays: features ``x_a``/``x_b`` ``[N, D]``, sampled labels ``[N]``, true P(a ≻ b) ``[N]``."""

    x_a: np.ndarray
    x_b: np.ndarray
    label: np.ndarray
    true_prob: np.ndarray


@dataclass(frozen=True)
class ListArrays:
    """Lists as arrays: features ``x`` ``[N, K, D]``, targets ``[N, K]`` (K − sampled rank), true utilities."""

    x: np.ndarray
    targets: np.ndarray
    utility: np.ndarray


class HiddenUtilityTask:
    """A preference task whose right answer is known: a hidden linear utility over Gaussian features.

    Args:
        num_features: feature size D.
        utility_scale: ‖w‖; larger means less label noise (the noise ceiling rises towards 1).
        seed: seed of the generator for w and every sample drawn later.
    """

    def __init__(self, num_features: int = 16, utility_scale: float = 3.0, seed: int = 0):
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.rng = np.random.default_rng(seed)
        w = self.rng.standard_normal(num_features)
        self.weights = (utility_scale * w / np.linalg.norm(w)).astype(np.float64)
        self.num_features = num_features

    def utility(self, x: np.ndarray) -> np.ndarray:
        """The hidden utility u(x) = w·x for features ``[..., D]``."""
        return x @ self.weights

    def _items(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal((*shape, self.num_features)).astype(np.float32)

    def pairs(self, n: int, noisy: bool = True) -> PairArrays:
        """Draw n pairs; labels are BT samples (``noisy``) or the hidden order itself (1 if u(a) > u(b))."""
        x_a, x_b = self._items(n), self._items(n)
        true_prob = _sigmoid(self.utility(x_a) - self.utility(x_b))
        if noisy:
            label = (self.rng.random(n) < true_prob).astype(np.float32)
        else:
            label = (true_prob > 0.5).astype(np.float32)
        return PairArrays(x_a, x_b, label, true_prob.astype(np.float32))

    def lists(self, n: int, k: int, noisy: bool = True) -> ListArrays:
        """Draw n lists of k items ranked by a Plackett-Luce rater (``noisy``) or by the hidden utility."""
        if k < 2:
            raise ValueError(f"list size k must be >= 2, got {k}")
        x = self._items(n, k)
        utility = self.utility(x)
        perturbed = utility + (self.rng.gumbel(size=utility.shape) if noisy else 0.0)
        rank = np.argsort(np.argsort(-perturbed, axis=-1), axis=-1)  # 0 = best
        return ListArrays(x, (k - 1 - rank).astype(np.float32), utility.astype(np.float32))

    def noise_ceiling(self, pairs: PairArrays) -> float:
        """Expected accuracy of the true utility itself on these pairs' noisy labels: E[max(p, 1 − p)]."""
        return float(np.maximum(pairs.true_prob, 1 - pairs.true_prob).mean())
