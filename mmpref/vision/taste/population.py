r"""A harder simulated population for personal taste: content *and* appearance, and held-out raters of another family.

Built differently from the demo's (:class:`mmpref.vision.demo_data.SimulatedPopulation`) on the same shipped images:

* **What a rater values** — a true feature vector f(x) ∈ ℝ^11 per image: what the photo shows (six content
  categories: people, animals, objects, nature/texture, science, text, from the photo it was cropped from), how it
  looks (the measured warmth, saturation, brightness, contrast), and one interaction (warm *and* bright). Features
  are standardised over the images. Utility u(x) = f(x)ᵀw.
* **Training raters** (family ``clusters``): a mixture of K taste clusters, w = c_k + ε, ε ~ N(0, σ²I).
* **Held-out raters** (family ``gaussian``): a continuous low-rank Gaussian, w = μ + Lξ + η, ξ ~ N(0, I_q) with a
  loading L of its own (only partly aligned with the clusters' span), η small and isotropic; or ``sparse``: a few
  features per rater with large weights; or ``clusters``: the training raters' own family (further raters from the
  same generator, the issue's setting of "12 further raters" — the in-family check beside the two shifted ones).
* **Label noise that varies by rater**: rationality β_u ~ LogNormal(log β, s); labels are Bradley-Terry samples
  P(a ≻ b) = σ(β_u (u(a) − u(b))).

The noise ceiling E[max(p, 1 − p)] and a near-Bayes-optimal reference (Laplace posterior over w from n pairs knowing
the true features and the held-out family's prior) are computed exactly from the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmpref.vision.demo_data import DemoItems, UserPairs

CONTENT = {
    "people": ("astronaut", "grace_hopper", "camera"),
    "animals": ("chelsea",),
    "objects": ("coffee", "rocket", "clock", "coins", "motorcycle_left", "motorcycle_right"),
    "nature": ("china", "flower", "grass", "gravel", "brick", "moon", "hubble_deep_field"),
    "science": ("immunohistochemistry", "retina", "cell"),
    "text": ("page", "text"),
}
FEATURE_NAMES = (*CONTENT, "warmth", "saturation", "brightness", "contrast", "warm_and_bright")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def content_features(items: DemoItems) -> np.ndarray:
    """The generator's true features f(x) ``[N, 11]`` (FEATURE_NAMES), standardised over the images."""
    photo = np.array([str(name).split("_", 1)[1] for name in items.names])
    onehot = np.stack([np.isin(photo, members) for members in CONTENT.values()], 1).astype(np.float64)
    props = items.properties[:, :4].astype(np.float64)
    props = (props - props.mean(0)) / props.std(0)
    interaction = props[:, 0] * props[:, 2]
    raw = np.concatenate([onehot, props, interaction[:, None]], 1)
    return (raw - raw.mean(0)) / raw.std(0)


@dataclass(frozen=True)
class Raters:
    """Raters' true weights ``[U, d]`` and rationalities ``[U]``."""

    weights: np.ndarray
    beta: np.ndarray


class ContentTastePopulation:
    """Training raters from taste clusters, held-out raters from a continuous (or sparse) family.

    Args:
        items: the image set (names decide the content category).
        num_train: training raters (cluster family).
        num_val: validation raters (same family as training; for choosing settings, never the test raters).
        num_test: held-out test raters.
        test_family: ``"gaussian"`` (continuous low-rank), ``"sparse"`` or ``"clusters"`` (the training family).
        clusters: number of taste clusters of the training family.
        scale: size of the taste weights (sets how far apart items are for a rater).
        beta: median rationality; ``beta_spread`` the log-normal spread of rationality over raters.
        seed: seed of the raters and every label.
    """

    def __init__(
        self,
        items: DemoItems,
        num_train: int = 40,
        num_val: int = 10,
        num_test: int = 24,
        test_family: str = "gaussian",
        clusters: int = 5,
        scale: float = 0.7,
        beta: float = 1.5,
        beta_spread: float = 0.5,
        seed: int = 0,
    ):
        if test_family not in ("gaussian", "sparse", "clusters"):
            raise ValueError(f"test_family must be 'gaussian', 'sparse' or 'clusters', got {test_family!r}")
        self.features = content_features(items)
        d = self.features.shape[1]
        self.rng = rng = np.random.default_rng([seed, 22])
        self.centres = scale * rng.standard_normal((clusters, d))
        self.cluster_noise = 0.35 * scale

        def betas(n: int) -> np.ndarray:
            return beta * np.exp(beta_spread * rng.standard_normal(n))

        def clustered(n: int) -> Raters:
            k = rng.integers(0, clusters, n)
            return Raters(self.centres[k] + self.cluster_noise * rng.standard_normal((n, d)), betas(n))

        self.train, self.val = clustered(num_train), clustered(num_val)
        # Held-out family: its own mean shift and loading; half of each loading column lies in the clusters' span.
        q = 4
        centred = self.centres - self.centres.mean(0)
        span = np.linalg.svd(centred, full_matrices=False)[2]  # [clusters, d] orthonormal rows
        inside = span.T @ rng.standard_normal((len(span), q))
        outside = rng.standard_normal((d, q))
        loading = inside / np.linalg.norm(inside, axis=0) + outside / np.linalg.norm(outside, axis=0)
        self.test_mean = self.centres.mean(0) + 0.3 * scale * rng.standard_normal(d)
        self.test_loading = scale * 0.8 * loading / np.linalg.norm(loading, axis=0)
        self.test_iso = 0.25 * scale
        self.test_family = test_family
        if test_family == "gaussian":
            w = self.test_mean + rng.standard_normal((num_test, q)) @ self.test_loading.T
            w = w + self.test_iso * rng.standard_normal((num_test, d))
        elif test_family == "clusters":
            members = rng.integers(0, clusters, num_test)
            w = self.centres[members] + self.cluster_noise * rng.standard_normal((num_test, d))
        else:
            w = np.zeros((num_test, d))
            for row in w:
                chosen = rng.choice(d, 3, replace=False)
                row[chosen] = 1.6 * scale * rng.standard_normal(3)
            w = w + self.test_mean
        self.test = Raters(w, betas(num_test))

    @property
    def test_prior(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the held-out family's weights (Gaussian family; moment-matched otherwise)."""
        if self.test_family == "clusters":  # the mixture's moments: the Gaussian closest to it
            centred = self.centres - self.centres.mean(0)
            cov = centred.T @ centred / len(self.centres) + self.cluster_noise**2 * np.eye(len(self.test_mean))
            return self.centres.mean(0), cov
        if self.test_family == "gaussian":
            cov = self.test_loading @ self.test_loading.T + self.test_iso**2 * np.eye(len(self.test_mean))
            return self.test_mean, cov
        d = len(self.test_mean)
        return self.test_mean, (3 / d) * (1.6 * 0.7) ** 2 * np.eye(d)

    def pairs(self, raters: Raters, user: int, n: int) -> UserPairs:
        """N random pairs of distinct images labelled by one rater (Bradley-Terry with the rater's β)."""
        items = len(self.features)
        a = self.rng.integers(0, items, n)
        b = (a + self.rng.integers(1, items, n)) % items
        u = self.features @ raters.weights[user]
        true_prob = _sigmoid(raters.beta[user] * (u[a] - u[b]))
        label = (self.rng.random(n) < true_prob).astype(np.float32)
        return UserPairs(a, b, label, true_prob.astype(np.float32))


def logistic_map(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, precision: np.ndarray, mean: np.ndarray, iterations: int = 50
) -> np.ndarray:
    """MAP of Bayesian logistic regression, −Σ log-lik(o + xw) + ½(w − m)ᵀP(w − m), by damped Newton steps."""

    def objective(w: np.ndarray) -> float:
        f = offset + x @ w
        return float(np.sum(np.logaddexp(0, f) - y * f) + 0.5 * (w - mean) @ precision @ (w - mean))

    w = np.asarray(mean, np.float64).copy()
    value = objective(w)
    for _ in range(iterations):
        p = _sigmoid(offset + x @ w)
        grad = x.T @ (p - y) + precision @ (w - mean)
        hess = (x * (p * (1 - p))[:, None]).T @ x + precision
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-4 and objective(w - size * step) > value + 1e-12:
            size *= 0.5  # halve until the objective does not rise: Newton alone can overshoot on separable data
        w = w - size * step
        new = objective(w)
        if abs(value - new) < 1e-10 or np.abs(size * step).max() < 1e-9:
            break
        value = new
    return w


def bayes_reference(
    features: np.ndarray,
    prior_mean: np.ndarray,
    prior_cov: np.ndarray,
    beta: float,
    pairs: UserPairs,
    n: int,
    test: UserPairs,
) -> float:
    """Accuracy on ``test`` of the Laplace-MAP weights from the first n of ``pairs``, knowing f and the prior.

    The MAP of Bayesian logistic regression under the true prior is (for these few dimensions) a close proxy of the
    Bayes-optimal decision: with a Gaussian-like posterior the sign of the predictive margin is the sign of the mean.
    """
    x = beta * (features[pairs.a[:n]] - features[pairs.b[:n]])
    y = pairs.label[:n].astype(np.float64)
    w = logistic_map(x, y, np.zeros(len(y)), np.linalg.inv(prior_cov), prior_mean)
    margin = (features[test.a] - features[test.b]) @ w
    return float(((margin > 0) == (test.label > 0.5)).mean())
