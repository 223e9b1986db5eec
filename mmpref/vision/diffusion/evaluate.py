"""Evaluation of a fine-tuned diffusion model against its base: win rates, taste shift, fidelity, implicit accuracy.

* **Unpaired win rate** (the target): each fine-tuned sample against an *independent* base sample of the same prompt
  (different initial noise); a win when the held-out preference function scores it higher, ties count ½.
* **Paired win rate** (reported beside it, not a target): same prompt and same initial noise. With deterministic
  DDIM any small consistent shift wins nearly every such pair, even when samples look identical.
* **Taste shift**: (mean fine-tuned score − mean base score) in units of the base's within-prompt SD.
* **Fidelity**: accuracy of a digit classifier trained on real digits, on samples of the requested digit.
* **Implicit-reward accuracy**: fraction of held-out pairs whose Diffusion-DPO score ranks the winner first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmpref.data.io import atomic_write
from mmpref.vision.diffusion.base import sample, seeded_noise
from mmpref.vision.diffusion.digits import HELD_OUT_TEMPLATES, prompt_for, to_unit

Scorer = Callable[[torch.Tensor], torch.Tensor]


def win_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """P(a > b) over aligned scores, ties counting ½."""
    return float(((a > b).float() + 0.5 * (a == b).float()).mean())


def eval_prompts(classes: Sequence[int], templates: Sequence[str] = HELD_OUT_TEMPLATES) -> tuple[list[str], list[int]]:
    """Held-out-wording prompts for the classes, with each prompt's digit."""
    prompts, labels = [], []
    for c in classes:
        for template in templates:
            prompts.append(prompt_for(c, template))
            labels.append(c)
    return prompts, labels


def sample_prompts(
    unet: nn.Module, scheduler: Any, cond: torch.Tensor, per_prompt: int, seed: int, steps: int = 25
) -> torch.Tensor:
    """``per_prompt`` samples of each prompt (conditioning ``[P, S, D]``) from seeded noise: ``[P, N, C, H, W]``."""
    flat = cond.repeat_interleave(per_prompt, 0)
    size, channels = int(unet.config.sample_size), int(unet.config.in_channels)
    x = sample(unet, scheduler, flat, seeded_noise(len(flat), seed, size, channels), steps)
    return x.view(len(cond), per_prompt, *x.shape[1:])


def compare(
    base_a: torch.Tensor,
    base_b: torch.Tensor,
    tuned_a: torch.Tensor,
    taste: Scorer,
) -> dict[str, float]:
    """Win rates and shift from samples ``[P, N, ...]``: base and tuned on noise A, base on independent noise B."""
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    s_base_a, s_base_b, s_tuned = (taste(flat(x)).view(x.shape[:2]) for x in (base_a, base_b, tuned_a))
    base_sd = float(torch.cat([s_base_a, s_base_b], 1).std(1).mean())
    return {
        "unpaired_win_rate": win_rate(s_tuned, s_base_b),
        "paired_win_rate": win_rate(s_tuned, s_base_a),
        "shift_sd": float((s_tuned.mean() - s_base_a.mean()) / base_sd),
        "base_mean": float(s_base_a.mean()),
        "tuned_mean": float(s_tuned.mean()),
        "base_sd": base_sd,
    }


@torch.no_grad()
def fidelity(classifier: nn.Module, samples: torch.Tensor, labels: Sequence[int]) -> float:
    """Classifier accuracy on samples ``[P, N, ...]`` of the requested digits ``labels`` (one per prompt)."""
    y = torch.tensor(labels).repeat_interleave(samples.shape[1])
    return float((classifier(samples.reshape(-1, *samples.shape[2:])).argmax(1) == y).float().mean())


@torch.no_grad()
def implicit_accuracy(system: Any, pairs: dict[str, torch.Tensor], draws: int = 4, seed: int = 0) -> float:
    """Share of held-out pairs whose Diffusion-DPO score, averaged over ``draws`` noise/timestep draws, ranks right."""
    devices_rng = torch.random.fork_rng()
    with devices_rng:
        torch.manual_seed(seed)
        margins = torch.zeros(len(pairs["x_w"]))
        for _ in range(draws):
            for start in range(0, len(margins), 256):
                chunk = {k: v[start : start + 256] for k, v in pairs.items()}
                s_w, s_l, _ = system.pair_scores(chunk)
                margins[start : start + 256] += s_w - s_l
    return win_rate(margins, torch.zeros_like(margins))


def save_grid(rows: Sequence[torch.Tensor], path: str | Path, scale: int = 4, gap: int = 2) -> Path:
    """A PNG grid: each row tensor ``[N, 1, H, W]`` in [−1, 1] becomes one row of images, written atomically."""
    from PIL import Image

    tiles = [to_unit(r)[:, 0].numpy() for r in rows]
    h, w = tiles[0].shape[1:]
    n = max(len(t) for t in tiles)
    canvas = np.ones((len(tiles) * (h + gap) - gap, n * (w + gap) - gap), dtype=np.float32) * 0.5
    for i, row in enumerate(tiles):
        for j, img in enumerate(row):
            canvas[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = img
    image = Image.fromarray((canvas * 255).astype(np.uint8)).resize(
        (canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST
    )
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="PNG")
    return Path(path)


def base_vs_tuned_grid(base: torch.Tensor, tuned: torch.Tensor, path: str | Path, columns: int = 6) -> Path:
    """Grid with, per prompt, a row of base samples then a row of fine-tuned samples for the same seeds."""
    rows = []
    for p in range(len(base)):
        rows += [base[p, :columns], tuned[p, :columns]]
    return save_grid(rows, path)


class BaseSamples:
    """Base-model samples reused across evaluations: noise A (all classes) and independent noise B."""

    def __init__(self, model: Any, classes: Sequence[int] = tuple(range(10)), per_prompt: int = 100, seed: int = 777):
        self.prompts, self.labels = eval_prompts(classes)
        self.cond = model.prompts.encode(self.prompts)
        self.per_prompt, self.seed = per_prompt, seed
        self.a = sample_prompts(model.unet, model.scheduler, self.cond, per_prompt, seed)
        self.b = sample_prompts(model.unet, model.scheduler, self.cond, per_prompt, seed + 1)


def evaluate_against_base(
    model: Any,
    system: Any,
    base: BaseSamples,
    taste: Scorer,
    classifier: nn.Module,
    held_out_classes: Sequence[int],
    user: int | None = None,
    grid_path: str | Path | None = None,
) -> dict[str, Any]:
    """All figures of a fine-tuned system against the base, on held-out-wording prompts.

    Win rates and the shift are reported on ``held_out_classes`` (never in the preference data) and on all
    classes; fidelity on all classes; implicit-reward accuracy on pairs of independent base samples of the held-out
    classes ranked by ``taste``.
    """
    cond = base.cond
    if user is not None:
        with torch.no_grad():
            cond = system.condition(cond, torch.full((len(cond),), user, dtype=torch.long))
    tuned = sample_prompts(system.unet, model.scheduler, cond, base.per_prompt, base.seed)
    held = [i for i, c in enumerate(base.labels) if c in held_out_classes]
    report: dict[str, Any] = {
        "held_out": compare(base.a[held], base.b[held], tuned[held], taste),
        "all_classes": compare(base.a, base.b, tuned, taste),
        "fidelity_base": fidelity(classifier, base.a, base.labels),
        "fidelity_tuned": fidelity(classifier, tuned, base.labels),
    }
    report["fidelity_drop_points"] = 100 * (report["fidelity_base"] - report["fidelity_tuned"])
    x = base.b[held]
    s = taste(x.reshape(-1, *x.shape[2:])).view(x.shape[:2])
    half = x.shape[1] // 2
    first, second = x[:, :half], x[:, half : 2 * half]
    better = (s[:, :half] >= s[:, half : 2 * half]).view(*s[:, :half].shape, 1, 1, 1)
    pairs = {
        "x_w": torch.where(better, first, second).reshape(-1, *x.shape[2:]),
        "x_l": torch.where(better, second, first).reshape(-1, *x.shape[2:]),
        "cond": base.cond[held].repeat_interleave(half, 0),
    }
    if user is not None:
        pairs["user"] = torch.full((len(pairs["x_w"]),), user, dtype=torch.long)
    report["implicit_accuracy_held_out_pairs"] = implicit_accuracy(system, pairs)
    if grid_path is not None:
        pick = [base.labels.index(c) for c in sorted(set(base.labels))]  # one prompt per class
        report["grid"] = str(base_vs_tuned_grid(base.a[pick], tuned[pick], grid_path))
    return report
