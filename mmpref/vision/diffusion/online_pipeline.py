"""On-policy Diffusion-DPO rounds on a local pipeline folder (SD 1.x/2.x, SDXL, SD3-class flow), scored by a reward.

Round r = 1..R: load the pipeline with round r−1's LoRA weights (round 1: the base), sample N images for each prompt
with the round's fixed seeds (``seed + 100003·r + i`` for image i), score them with a reward scorer
(:func:`mmpref.vision.diffusion.rewards.load_reward`: images ``[N, C, H, W]`` in [−1, 1] → ``[N]``), pair them
within each prompt by :func:`mmpref.vision.diffusion.onpolicy.build_pairs`'s rules (best vs worst of groups, or
random pairs with a score-gap filter), write the pairs as a Pick-a-Pic Parquet file (``round-r/pairs.parquet``:
``caption``, ``jpg_0`` = winner PNG bytes, ``jpg_1`` = loser, ``label_0 = 1``), then run the pipeline DPO job
(:func:`mmpref.vision.diffusion.pipelines.train`) on it, its adapters starting from round r−1's weights
(``init_lora``) and its reference the base (adapters disabled), and write ``round-r/lora``. After the last round the
tuned model is sampled once more with round R+1's seeds, so the report holds the mean reward of every round's
samples and of the final model's.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmpref.data.io import atomic_write
from mmpref.errors import MmprefError
from mmpref.vision.diffusion.onpolicy import Candidates, Pairing, build_pairs
from mmpref.vision.diffusion.pipelines import PipelineDPOConfig, save_finetuned, train

logger = logging.getLogger(__name__)
Scorer = Callable[[torch.Tensor], torch.Tensor]
SEED_STRIDE = 100003  # seeds of round r start at seed + r * SEED_STRIDE: no two rounds share a seed


class OnlineError(MmprefError):
    """Bad input of the online loop (a LoRA folder, a pairing filter that leaves no pair), with the fix."""


@dataclass
class OnlineSettings:
    """The loop's own settings (the DPO step's are a :class:`PipelineDPOConfig`).

    Args:
        rounds: sample → score → pair → DPO rounds R.
        per_prompt: images sampled per prompt and round N.
        sample_steps: denoising steps of each sample.
        guidance: classifier-free guidance scale of the samples (<= 1: none).
        pairing: ``best_worst`` (the best and worst of each group of ``group``) or ``random``.
        group: group size of ``best_worst`` (default: all N samples of a prompt form one group).
        pairs_per_sample: random pairings per sample (``random``).
        min_gap_sd: drop pairs whose score gap is below this many within-prompt score SDs (0: only exact ties).
        seed: base of the sampling seeds.
    """

    rounds: int = 2
    per_prompt: int = 4
    sample_steps: int = 10
    guidance: float = 5.0
    pairing: Pairing = "best_worst"
    group: int | None = None
    pairs_per_sample: int = 1
    min_gap_sd: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rounds", "per_prompt", "sample_steps", "pairs_per_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.per_prompt < 2:
            raise ValueError(f"per_prompt must be >= 2 (pairs are made within a prompt), got {self.per_prompt}")
        if self.pairing not in ("best_worst", "random"):
            raise ValueError(f"pairing must be 'best_worst' or 'random', got {self.pairing!r}")


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file.

    Raises:
        FileNotFoundError: the file is missing. ValueError: it holds no prompt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompts file not found; pass a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompt in the file; write one prompt per line")
    return prompts


def load_sampler(pipeline: str | Path, lora: str | Path | None = None) -> Any:
    """The pipeline of ``pipeline``'s family (checked), with ``lora``'s weights loaded when given."""
    from mmpref.vision.diffusion.families import load_family

    if lora is not None and not (Path(lora) / "pytorch_lora_weights.safetensors").is_file():
        raise OnlineError(f"{lora}: no pytorch_lora_weights.safetensors in it; pass a LoRA folder of an earlier run")
    family = load_family(pipeline)
    if lora is not None:
        family.pipe.load_lora_weights(str(lora))
    family.pipe.set_progress_bar_config(disable=True)
    return family


@torch.no_grad()
def sample_images(
    family: Any, prompts: Sequence[str], per_prompt: int, seed: int, steps: int, guidance: float
) -> torch.Tensor:
    """``[P, N, 3, R, R]`` images in [−1, 1] at the pipeline's resolution R.

    Image i of the flat P·N uses ``torch.Generator().manual_seed(seed + i)``: the same seed gives the same noise to
    any weights.
    """
    flat = [p for p in prompts for _ in range(per_prompt)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(flat))]
    size = family.resolution
    out = family.pipe(
        prompt=flat,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        generator=generators,
        output_type="pt",
    ).images
    images = out.float().clamp(0, 1) * 2 - 1  # the pipeline's [0, 1] → the scorers' [−1, 1]
    return images.view(len(prompts), per_prompt, *images.shape[1:])


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pairs(
    path: str | Path, images: torch.Tensor, scores: torch.Tensor, prompts: Sequence[str], settings: OnlineSettings
) -> int:
    """Pair the scored samples (``build_pairs``'s rules) and write them as Pick-a-Pic Parquet atomically; the count.

    Extra columns ``score_0``/``score_1`` keep the winner's and loser's rewards (the DPO reader ignores them).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p, n = scores.shape
    index = torch.arange(p * n).view(p, n, 1)  # pair sample indices, not pixels: no image tensor is copied per pair
    candidates = Candidates(index, scores, torch.arange(p), list(prompts))
    try:
        pairs = build_pairs(
            candidates,
            pairing=settings.pairing,
            pairs_per_sample=settings.pairs_per_sample,
            group=settings.group or n,
            min_gap_sd=settings.min_gap_sd,
            seed=settings.seed,
        ).tensors
    except ValueError as err:  # the gap filter left no pair (e.g. a scorer that ties every sample)
        raise OnlineError(f"{path}: {err}") from None
    flat_images, flat_scores = images.reshape(p * n, *images.shape[2:]), scores.reshape(-1)
    win, lose, rows = pairs["x_w"].view(-1), pairs["x_l"].view(-1), pairs["cond"]
    encoded: dict[int, bytes] = {}  # a sample in several pairs (random pairing) is PNG-encoded once

    def png(i: torch.Tensor) -> bytes:
        if int(i) not in encoded:
            encoded[int(i)] = _png(flat_images[int(i)])
        return encoded[int(i)]

    table = pa.table(
        {
            "caption": [prompts[int(r)] for r in rows],
            "jpg_0": [png(i) for i in win],
            "jpg_1": [png(i) for i in lose],
            "label_0": [1.0] * len(win),
            "score_0": flat_scores[win].tolist(),
            "score_1": flat_scores[lose].tolist(),
        }
    )
    with atomic_write(Path(path), "wb") as handle:
        pq.write_table(table, handle)
    return len(win)


def _sample_and_score(
    cfg: PipelineDPOConfig, lora: Path | None, prompts: list[str], settings: OnlineSettings, scorer: Scorer, rnd: int
) -> tuple[torch.Tensor, torch.Tensor]:
    family = load_sampler(cfg.pipeline, lora)
    seed = settings.seed + SEED_STRIDE * rnd
    images = sample_images(family, prompts, settings.per_prompt, seed, settings.sample_steps, settings.guidance)
    del family  # its own copy of the pipeline; training loads a fresh one without the sampling LoRA
    p, n = images.shape[:2]
    scores = scorer(images.reshape(p * n, *images.shape[2:])).detach().float().view(p, n)
    return images, scores


def run_online(
    cfg: PipelineDPOConfig,
    prompts: list[str],
    scorer: Scorer,
    settings: OnlineSettings,
    out: str | Path,
    say: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """R rounds of sample → score → pair → pipeline DPO; returns the report written to ``out/report.json``.

    Writes ``out/round-r/{pairs.parquet, lora, report.json}``; the report holds per round the mean/SD reward of its
    samples, the pair count and the DPO metrics, and the final model's mean reward.

    ``cfg`` is the DPO step's recipe; its ``pairs``, ``init_lora`` and ``log_dir`` are set per round (the log folder,
    when one is set, gets a ``round-r`` subfolder). The first round starts from ``cfg.init_lora`` if set, else the
    base. Only ``mode: lora`` is supported (each round's output loads onto the unchanged base).
    """
    if cfg.mode != "lora":
        raise ValueError("dpo-online tunes LoRA adapters round after round: set mode: lora")
    out = Path(out)
    lora = Path(cfg.init_lora) if cfg.init_lora else None
    report: dict[str, Any] = {"pipeline": cfg.pipeline, "prompts": prompts, "settings": dataclasses.asdict(settings)}
    rounds = []
    for rnd in range(1, settings.rounds + 1):
        folder = out / f"round-{rnd}"
        images, scores = _sample_and_score(cfg, lora, prompts, settings, scorer, rnd)
        count = write_pairs(folder / "pairs.parquet", images, scores, prompts, settings)
        log_dir = str(Path(cfg.log_dir) / f"round-{rnd}") if cfg.log_dir else None
        round_cfg = dataclasses.replace(
            cfg, pairs=str(folder / "pairs.parquet"), init_lora=str(lora) if lora else None, log_dir=log_dir
        )
        family, system, dpo = train(round_cfg)
        lora = save_finetuned(family, system, "lora", folder / "lora")
        del family, system
        entry = {
            "round": rnd,
            "mean_reward": float(scores.mean()),
            "sd_reward": float(scores.std()),
            "pairs": count,
            "started_from": round_cfg.init_lora or "base",
            "lora": str(lora),
            "dpo": dpo,
        }
        with atomic_write(folder / "report.json", "w") as handle:
            json.dump(entry, handle, indent=2, default=str)
        rounds.append(entry)
        say(f"round {rnd}: mean reward of its samples {entry['mean_reward']:+.4f}; {count} pairs; wrote {lora}")
    _, final = _sample_and_score(cfg, lora, prompts, settings, scorer, settings.rounds + 1)
    report |= {"rounds": rounds, "final_mean_reward": float(final.mean()), "final_lora": str(lora)}
    say(f"final model (seeds of round {settings.rounds + 1}): mean reward {report['final_mean_reward']:+.4f}")
    with atomic_write(out / "report.json", "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    return report
