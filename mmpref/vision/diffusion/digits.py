"""The embedded default: scikit-learn's real 8×8 handwritten digits upsampled, their prompts, and simulated tastes.

Images are ``[N, 1, S, S]`` float tensors in [−1, 1] (background −1, ink +1). A prompt names the digit and, for some
training images, the stroke weight measured on that image ("thick strokes" for the heaviest third of its class),
so the text conditioning carries real information beyond the class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit}",
    "a handwritten {word}, {style}",
    "the number {word} written by hand, {style}",
)
STYLES = ("thin strokes", "", "thick strokes")
# Phrasings never seen in pre-training or preference data: evaluation prompts are held out in wording as well as
# (for classes 7-9) in content.
HELD_OUT_TEMPLATES = ("a scanned handwritten digit {digit}", "someone wrote the number {word}")
PREFERENCE_CLASSES = (0, 1, 2, 3, 4, 5, 6)
HELD_OUT_CLASSES = (7, 8, 9)


@dataclass(frozen=True)
class DigitImages:
    """Real digits as tensors.

    Attributes:
        images: ``[N, 1, S, S]`` in [−1, 1].
        labels: ``[N]`` int64 digit classes.
        ink_tercile: ``[N]`` 0/1/2, the image's stroke weight tercile within its class.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ink_tercile: torch.Tensor


def load_digits(size: int = 16) -> DigitImages:
    """Load sklearn's 1,797 digits, scale ÷16, upsample bilinearly to ``size`` px and map to [−1, 1]."""
    from sklearn.datasets import load_digits as _load

    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8×8), got {size}")
    data = _load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1) * 2 - 1
    labels = torch.tensor(data.target, dtype=torch.int64)
    ink = ink_taste(x)
    tercile = torch.zeros_like(labels)
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        ranks = ink[idx].argsort().argsort()
        tercile[idx] = (ranks * 3 // len(idx)).clamp(max=2)
    return DigitImages(images=x, labels=labels, ink_tercile=tercile)


def prompt_for(digit: int, template: str, style: str = "") -> str:
    """Fill a template; a template with ``{style}`` and an empty style drops the trailing clause."""
    if "{style}" in template and not style:
        template = template.split(", {style}")[0]
    return template.format(word=WORDS[digit], digit=digit, style=style)


def training_prompts(labels: torch.Tensor, terciles: torch.Tensor, generator: torch.Generator) -> list[str]:
    """One random training prompt per image; styled templates name the image's stroke-weight tercile."""
    choice = torch.randint(len(TRAIN_TEMPLATES), (len(labels),), generator=generator)
    return [
        prompt_for(int(c), TRAIN_TEMPLATES[int(k)], STYLES[int(s)])
        for c, k, s in zip(labels.tolist(), choice.tolist(), terciles.tolist(), strict=True)
    ]


def all_training_prompts() -> list[str]:
    """Every prompt pre-training can draw (cached as embeddings beside the checkpoint)."""
    return sorted({prompt_for(c, t, s) for c in range(10) for t in TRAIN_TEMPLATES for s in STYLES})


def class_prompts(classes: Sequence[int], templates: Sequence[str] = ("a handwritten {word}",)) -> list[str]:
    """Plain prompts (no style clause) for the given classes, one per class and template."""
    return [prompt_for(c, t) for c in classes for t in templates]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] model space → [0, 1] intensity."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def ink_taste(images: torch.Tensor) -> torch.Tensor:
    """Ink taste: mean intensity in [0, 1] of each image ``[N, 1, S, S]`` → ``[N]`` (more ink = preferred)."""
    return to_unit(images).flatten(1).mean(1)


def slant_taste(images: torch.Tensor) -> torch.Tensor:
    r"""Slant taste: positive when the top of the digit leans right.

    .. math:: s = -\operatorname{cov}_w(\text{col}, \text{row}) / \operatorname{var}_w(\text{row})

    with intensity weights w (rows grow downwards, so a right-leaning top has negative covariance).
    """
    w = to_unit(images)[:, 0]
    size = w.shape[-1]
    rows = torch.arange(size, dtype=w.dtype).view(1, size, 1).expand_as(w)
    cols = torch.arange(size, dtype=w.dtype).view(1, 1, size).expand_as(w)
    mass = w.sum((1, 2)).clamp_min(1e-6)
    mr = (w * rows).sum((1, 2)) / mass
    mc = (w * cols).sum((1, 2)) / mass
    cov = (w * (rows - mr[:, None, None]) * (cols - mc[:, None, None])).sum((1, 2)) / mass
    var = (w * (rows - mr[:, None, None]) ** 2).sum((1, 2)) / mass
    return -cov / var.clamp_min(1e-6)


TASTES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ink": ink_taste,
    "thin": lambda images: -ink_taste(images),
    "slant": slant_taste,
}


def get_taste(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A simulated taste by name (``ink``, ``thin``, ``slant``); raises ``ValueError`` listing valid names."""
    if name not in TASTES:
        raise ValueError(f"unknown taste {name!r}; valid tastes: {', '.join(TASTES)}")
    return TASTES[name]


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` px in x and y, filling with the background (−1)."""
    n, _, h, w = images.shape
    p = max_shift
    padded = F.pad(images, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, 1, h, w)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, 1, h, w)
    flat = padded.flatten(2)
    index = (rows * (w + 2 * p) + cols).flatten(2)
    return flat.gather(2, index).view(n, 1, h, w)
