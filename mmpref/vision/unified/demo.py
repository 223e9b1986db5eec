"""Known-answer data for the unified reward model: per-dimension image preferences and motion-dependent video pairs.

* Images: the shipped demo set; the dimensions ``brightness``, ``saturation`` and ``warmth`` are the images'
  measured properties. Brightness is taught by pairs, saturation by ranked lists and warmth by 1-5 ratings, so one
  model learns all three from three record types at once.
* Videos: clips that pan a window across a real photo. A *smooth* clip shows the window positions in order
  (forward or backward); a *jerky* clip shows the very same frames shuffled. Raters prefer smooth clips. The two
  clips of a pair hold the same set of frames, so any frame-mean model scores them identically: only motion
  tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image
from torch.utils.data import DataLoader

from mmpref.reward.datamodule import DictDataset
from mmpref.reward.trainers import quick_trainer
from mmpref.vision.demo_data import DemoItems, source_photos
from mmpref.vision.encoders import ImageEncoder
from mmpref.vision.unified.model import UnifiedRewardModel, UnifiedRewardSystem

IMAGE_DIMENSIONS = ("brightness", "saturation", "warmth")
_PROPERTY_COLUMN = {"warmth": 0, "saturation": 1, "brightness": 2}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def image_dimension_data(
    items: DemoItems,
    train_items: np.ndarray,
    n_pairs: int = 1500,
    n_lists: int = 200,
    n_ratings: int = 200,
    list_size: int = 6,
    beta: float = 4.0,
    seed: int = 0,
) -> dict:
    """Pairs (brightness), lists (saturation) and rating lists (warmth) over ``train_items``, with BT/PL noise."""
    rng = np.random.default_rng(seed)
    emb = torch.from_numpy(items.embeddings)
    z = items.standardized

    def prop(name: str) -> np.ndarray:
        return z[:, _PROPERTY_COLUMN[name]]

    a, b = rng.choice(train_items, n_pairs), rng.choice(train_items, n_pairs)
    p = _sigmoid(beta * (prop("brightness")[a] - prop("brightness")[b]))
    pairs = DictDataset(
        frames_a=emb[a].unsqueeze(1),
        frames_b=emb[b].unsqueeze(1),
        label=torch.from_numpy((rng.random(n_pairs) < p).astype(np.float32)),
        dim=torch.full((n_pairs,), IMAGE_DIMENSIONS.index("brightness")),
    )
    chosen = np.stack([rng.choice(train_items, list_size, replace=False) for _ in range(n_lists)])
    noisy = beta * prop("saturation")[chosen] + rng.gumbel(size=chosen.shape)  # Plackett-Luce sampling
    lists = DictDataset(
        frames=emb[chosen].unsqueeze(2),
        targets=torch.from_numpy(noisy.argsort(-1).argsort(-1).astype(np.float32)),
        mask=torch.ones(chosen.shape, dtype=torch.bool),
        dim=torch.full((n_lists,), IMAGE_DIMENSIONS.index("saturation")),
    )
    rated = np.stack([rng.choice(train_items, list_size, replace=False) for _ in range(n_ratings)])
    warm = prop("warmth")[rated] + rng.logistic(scale=1.0 / beta, size=rated.shape)
    stars = 1 + np.searchsorted(np.quantile(prop("warmth"), [0.2, 0.4, 0.6, 0.8]), warm)
    ratings = DictDataset(
        frames=emb[rated].unsqueeze(2),
        targets=torch.from_numpy(stars.astype(np.float32)),
        mask=torch.ones(rated.shape, dtype=torch.bool),
        dim=torch.full((n_ratings,), IMAGE_DIMENSIONS.index("warmth")),
    )
    return {"pairs": pairs, "lists": lists, "ratings": ratings}


def image_test_pairs(
    items: DemoItems, test_items: np.ndarray, dimension: str, n: int = 1000, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out image pairs labelled by the true order of one dimension: (frames_a, frames_b, label)."""
    rng = np.random.default_rng(seed)
    a, b = rng.choice(test_items, n), rng.choice(test_items, n)
    keep = a != b
    a, b = a[keep], b[keep]
    z = items.standardized[:, _PROPERTY_COLUMN[dimension]]
    emb = torch.from_numpy(items.embeddings)
    return emb[a].unsqueeze(1), emb[b].unsqueeze(1), torch.from_numpy((z[a] > z[b]).astype(np.float32))


@dataclass(frozen=True)
class PanFrames:
    """Frame embeddings ``[P, S, D]`` of S window positions panning across each of P photos."""

    embeddings: np.ndarray

    @property
    def photos(self) -> int:
        """Number of photos panned."""
        return self.embeddings.shape[0]


def pan_frames(encoder: ImageEncoder, photos: int = 16, steps: int = 10, size: int = 160) -> PanFrames:
    """Embed ``steps`` square windows sliding left to right across each of the first ``photos`` source photos."""
    frames: list[Image.Image] = []
    for _, array in source_photos()[:photos]:
        h, w = array.shape[:2]
        side = min(h, int(w * 0.6))
        top = (h - side) // 2
        for x in np.linspace(0, w - side, steps).astype(int):
            frames.append(Image.fromarray(array[top : top + side, x : x + side]).resize((size, size)))
    embeddings = encoder.embed_images(frames).reshape(photos, steps, -1)
    return PanFrames(embeddings)


def motion_pairs(
    pans: PanFrames, photo_ids: np.ndarray, n: int, window: int = 6, seed: int = 0
) -> dict[str, torch.Tensor]:
    """N pairs (smooth clip, jerky clip of the same frames), randomly ordered; label = P(first is preferred)."""
    rng = np.random.default_rng(seed)
    steps = pans.embeddings.shape[1]
    a_frames, b_frames, labels = [], [], []
    for _ in range(n):
        photo = rng.choice(photo_ids)
        start = rng.integers(0, steps - window + 1)
        smooth = np.arange(start, start + window)
        if rng.random() < 0.5:
            smooth = smooth[::-1]  # backward pans are just as smooth
        jerky = rng.permutation(smooth)
        while np.all(np.abs(np.diff(jerky)) == 1):  # a shuffle that happens to be smooth is redrawn
            jerky = rng.permutation(smooth)
        clips = (pans.embeddings[photo, smooth], pans.embeddings[photo, jerky])
        first = rng.random() < 0.5
        a_frames.append(clips[0] if first else clips[1])
        b_frames.append(clips[1] if first else clips[0])
        labels.append(1.0 if first else 0.0)
    return {
        "frames_a": torch.from_numpy(np.stack(a_frames)),
        "frames_b": torch.from_numpy(np.stack(b_frames)),
        "label": torch.tensor(labels),
        "dim": torch.zeros(n, dtype=torch.long),
    }


def fit_unified(
    model: UnifiedRewardModel,
    train: dict[str, DictDataset],
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> UnifiedRewardModel:
    """Train on any mix of pair/list/rating datasets with one CombinedLoader (CPU, seconds)."""
    L.seed_everything(seed, verbose=False)
    loaders = {key: DataLoader(ds, batch_size=batch_size, shuffle=True) for key, ds in train.items()}
    system = UnifiedRewardSystem(model, optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=1e-4))
    trainer = quick_trainer(epochs)
    trainer.fit(system, CombinedLoader(loaders, mode="max_size_cycle"))
    return model.eval()
