"""The fidelity guard's digit classifier: a small CNN trained on 80 % of the real digits (never on samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmpref.data.io import atomic_write
from mmpref.vision.diffusion.digits import DigitImages, random_shift


class DigitClassifier(nn.Module):
    """Three 3×3 conv layers (16/32/64 channels, two 2× poolings), global average pool, linear head → 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 10]`` of images ``[N, 1, S, S]`` in [−1, 1]."""
        return self.net(images)


def train_classifier(data: DigitImages, seed: int = 0, epochs: int = 40) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train on a seeded 80 % split with ±1 px shifts and slight noise; report held-out real accuracy."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(data.labels), generator=generator)
    cut = int(0.8 * len(order))
    train, test = order[:cut], order[cut:]
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(perm), 128):
            idx = perm[start : start + 128]
            x = random_shift(data.images[idx], generator)
            x = x + 0.05 * torch.randn(x.shape, generator=generator)
            loss = F.cross_entropy(model(x), data.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.images[test]).argmax(1) == data.labels[test]).float().mean().item()
    return model, {"held_out_real_accuracy": round(accuracy, 4), "train_images": cut, "seed": seed}


def save_classifier(model: DigitClassifier, path: str | Path) -> Path:
    """Write the classifier's weights as safetensors, atomically."""
    from safetensors.torch import save

    with atomic_write(path, "wb") as handle:
        handle.write(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return Path(path)


def load_classifier(path: str | Path) -> DigitClassifier:
    """Load a classifier written by :func:`save_classifier`."""
    from mmpref.modelfiles import check_shapes, load_safetensors

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no digit classifier; scripts/train_digit_diffusion.py writes one")
    fix = "rebuild it with scripts/train_digit_diffusion.py or copy it again from the base model folder"
    state = load_safetensors(path, fix)
    model = DigitClassifier()
    check_shapes(path, state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, fix)
    model.load_state_dict(state)
    return model.eval()
