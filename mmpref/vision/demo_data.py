"""Embedded default data for personal scoring: real photos, tone variations, and a simulated population of raters.

Images: the real photos shipped by scikit-image, scikit-learn and matplotlib, each varied by random crops and by
colour temperature, saturation, brightness and contrast (:func:`make_demo_image`, deterministic per index).
Their *measured* properties (warmth, saturation, brightness, contrast from the pixels; "animal-ness" from the real
EfficientNet-Lite0 ImageNet classifier) define hidden tastes; models only ever see the encoder embeddings.

Raters (:class:`SimulatedPopulation`): each user belongs to one of a few taste groups (weights over the standardised
properties) plus individual noise; they answer pairs by Bradley-Terry sampling with rationality ``beta`` and rate
items 1-5. Their noise ceiling (the accuracy of their own true utility on their noisy labels) is known exactly.

The embeddings and properties of the default set ship in ``assets/demo_taste/items.npz``, made by
``scripts/build_demo_assets.py`` from this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

PROPERTY_NAMES = ("warmth", "saturation", "brightness", "contrast", "animal")
IMAGE_SIZE = 192
# ImageNet-1k: classes 0-397 are animals (fish to primates); the rest are objects, scenes and food.
ANIMAL_CLASSES = slice(0, 398)

# Taste groups: weights over the standardised properties (warmth, saturation, brightness, contrast, animal).
TASTE_GROUPS: dict[str, tuple[float, ...]] = {
    "warm-bright": (1.5, 0.4, 1.0, 0.0, 0.0),
    "cool-moody": (-1.5, -0.3, -1.0, 0.8, 0.0),
    "vivid-animals": (0.0, 1.5, 0.0, 0.3, 1.2),
    "muted-calm": (0.0, -1.5, 0.0, -0.8, -0.6),
}


def _source_photos() -> list[tuple[str, np.ndarray]]:
    """The real photos shipped inside installed packages, as RGB uint8 arrays."""
    import matplotlib.cbook
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    photos: list[tuple[str, np.ndarray]] = []
    for name in (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "camera",
        "coins",
        "moon",
        "page",
        "text",
        "clock",
        "brick",
        "grass",
        "gravel",
        "cell",
    ):
        array = getattr(sk, name)()
        photos.append((name, np.stack([array] * 3, -1) if array.ndim == 2 else array[..., :3]))
    left, right, _ = sk.stereo_motorcycle()
    photos += [("motorcycle_left", left), ("motorcycle_right", right)]
    china, flower = load_sample_images().images
    photos += [("china", china), ("flower", flower)]
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        photos.append(("grace_hopper", np.asarray(Image.open(handle).convert("RGB"))))
    return photos


_PHOTOS: list[tuple[str, np.ndarray]] | None = None


def source_photos() -> list[tuple[str, np.ndarray]]:
    """The source photos, loaded once per process."""
    global _PHOTOS
    if _PHOTOS is None:
        _PHOTOS = _source_photos()
    return _PHOTOS


def make_demo_image(index: int, seed: int = 0) -> tuple[str, Image.Image]:
    """The ``index``-th demo image: a random crop of one source photo with random tone changes (deterministic)."""
    photos = source_photos()
    rng = np.random.default_rng([seed, index])
    name, array = photos[index % len(photos)]
    h, w = array.shape[:2]
    side = int(min(h, w) * rng.uniform(0.45, 1.0))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    image = Image.fromarray(array[top : top + side, left : left + side]).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC
    )
    temperature = rng.uniform(-1, 1)
    gains = np.array([1 + 0.3 * temperature, 1.0, 1 - 0.3 * temperature])
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) * gains, 0, 255).astype(np.uint8))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.15, 1.9))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.55, 1.45))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.55, 1.6))
    return f"{index:04d}_{name}", image


def measure_properties(image: Image.Image) -> np.ndarray:
    """Pixel properties of an image: warmth, saturation, brightness, contrast (the first four of PROPERTY_NAMES)."""
    rgb = np.asarray(image.convert("RGB"), np.float32) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    hsv = np.asarray(image.convert("HSV"), np.float32) / 255.0
    warmth = float((rgb[..., 0] - rgb[..., 2]).mean())
    return np.array([warmth, float(hsv[..., 1].mean()), float(luma.mean()), float(luma.std())], np.float32)


def assets_dir() -> Path:
    """The project's ``assets/`` folder (``MMPREF_ASSETS`` overrides)."""
    if "MMPREF_ASSETS" in os.environ:
        return Path(os.environ["MMPREF_ASSETS"])
    return Path(__file__).resolve().parents[2] / "assets"


@dataclass(frozen=True)
class DemoItems:
    """The default image set: names ``[N]``, embeddings ``[N, D]``, raw properties ``[N, P]`` (PROPERTY_NAMES)."""

    names: np.ndarray
    embeddings: np.ndarray
    properties: np.ndarray
    seed: int

    @property
    def standardized(self) -> np.ndarray:
        """Properties as z-scores over the set (what the taste weights apply to)."""
        return (self.properties - self.properties.mean(0)) / self.properties.std(0)


def load_demo_items(path: str | Path | None = None) -> DemoItems:
    """Load the shipped demo set (``assets/demo_taste/items.npz``)."""
    path = Path(path) if path is not None else assets_dir() / "demo_taste" / "items.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: demo items not found; build them with `.venv/bin/python scripts/build_demo_assets.py`"
        )
    with np.load(path, allow_pickle=False) as data:
        return DemoItems(
            data["names"],
            data["embeddings"].astype(np.float32),
            data["properties"].astype(np.float32),
            int(data["seed"]),
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class UserPairs:
    """One user's pairs: item indices ``a``, ``b`` ``[M]``, sampled labels P(a ≻ b) ``[M]``, true P ``[M]``."""

    a: np.ndarray
    b: np.ndarray
    label: np.ndarray
    true_prob: np.ndarray


class SimulatedPopulation:
    """Raters with hidden tastes over image properties, in taste groups plus individual noise.

    Args:
        features: standardised item properties ``[N, P]``.
        num_users: how many raters.
        beta: rationality of the Bradley-Terry answers (higher = less noise).
        individual_noise: standard deviation of each user's deviation from the group weights.
        seed: seed of the users and of every label they give.
    """

    def __init__(
        self, features: np.ndarray, num_users: int, beta: float = 1.5, individual_noise: float = 0.35, seed: int = 0
    ):
        self.features = np.asarray(features, np.float64)
        self.rng = np.random.default_rng(seed)
        groups = np.array(list(TASTE_GROUPS.values()))
        self.group_of = self.rng.integers(0, len(groups), num_users)
        self.weights = groups[self.group_of] + individual_noise * self.rng.standard_normal(
            (num_users, groups.shape[1])
        )
        self.beta = beta
        self.group_names = list(TASTE_GROUPS)

    @property
    def num_users(self) -> int:
        """Number of raters."""
        return len(self.weights)

    def utility(self, user: int) -> np.ndarray:
        """The user's true utility of every item ``[N]``."""
        return self.features @ self.weights[user]

    def pairs(self, user: int, n: int, items: np.ndarray | None = None) -> UserPairs:
        """N random pairs among ``items`` (default all), labelled by the user with BT noise."""
        pool = np.arange(len(self.features)) if items is None else np.asarray(items)
        a = self.rng.choice(pool, n)
        b = self.rng.choice(pool, n)
        same = a == b
        b[same] = self.rng.choice(pool, int(same.sum()))  # redraw self-pairs once; a rare leftover is a tie
        u = self.utility(user)
        true_prob = _sigmoid(self.beta * (u[a] - u[b]))
        label = np.where(a == b, 0.5, (self.rng.random(n) < true_prob).astype(np.float64))
        return UserPairs(a, b, label.astype(np.float32), true_prob.astype(np.float32))

    def ratings(self, user: int, items: np.ndarray) -> np.ndarray:
        """1-5 ratings of ``items``: the utility plus logistic noise, cut at the population's utility quintiles."""
        u = self.utility(user)
        cuts = np.quantile(u, [0.2, 0.4, 0.6, 0.8])
        noisy = u[items] + self.rng.logistic(scale=1.0 / self.beta, size=len(items))
        return (1 + np.searchsorted(cuts, noisy)).astype(np.float32)

    @staticmethod
    def noise_ceiling(pairs: UserPairs) -> float:
        """Expected accuracy of the user's own true utility on their noisy labels: E[max(p, 1 − p)]."""
        return float(np.maximum(pairs.true_prob, 1 - pairs.true_prob).mean())
