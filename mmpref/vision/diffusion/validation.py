"""A validation grid during pipeline DPO: fixed prompts and seeds, the base beside the tuned denoiser, every N steps.

Every ``every_n_steps`` optimizer steps, rank 0 samples each prompt with each seed twice through the pipeline's own
sampler (its scheduler, ``steps`` denoising steps, classifier-free guidance ``guidance``): once with the reference
(LoRA adapters disabled, or the frozen copy of a full fine-tune) and once with the policy. The grid is written to
``<folder>/step-<global step>.png``: one row per prompt, the seeds' base images on the left and the same seeds' tuned
images on the right, each R×R pixels with no gap (so the PNG is ``P·R`` high and ``2·S·R`` wide). With a TensorBoard
logger it is logged as the image ``val/base_vs_tuned`` too.

Prompts are encoded once, before training releases the text encoders (the callback keeps only their outputs and the
VAE, whose decoder turns latents into pixels). The base never changes, so its images are sampled once and reused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from mmpref.data.io import atomic_write

logger = logging.getLogger(__name__)


class ValidationGrid(L.Callback):
    """Sample fixed prompts × seeds from the base and the tuned denoiser every N steps; write (and log) the grid.

    Args:
        family: the pipeline's family adapter (:mod:`~mmpref.vision.diffusion.families`), text encoders still
            loaded (build the callback before :meth:`~mmpref.vision.diffusion.families.Family.release_encoders`).
        prompts: the fixed prompts (grid rows).
        seeds: the fixed seeds (one column per seed, base then tuned).
        every_n_steps: sample after every so many optimizer steps.
        folder: where the PNG grids go.
        steps: denoising steps of the pipeline's sampler (small: this runs during training).
        guidance: classifier-free guidance scale (≤ 1 turns guidance off).
    """

    def __init__(
        self,
        family: Any,
        prompts: Sequence[str],
        seeds: Sequence[int],
        every_n_steps: int,
        folder: str | Path,
        steps: int = 4,
        guidance: float = 5.0,
    ):
        if not prompts or not seeds:
            raise ValueError("a validation grid needs at least one prompt and one seed")
        if every_n_steps < 1 or steps < 1:
            raise ValueError(f"every_n_steps and steps must be >= 1, got {every_n_steps} and {steps}")
        self.family, self.prompts, self.seeds = family, list(prompts), [int(s) for s in seeds]
        self.every_n_steps, self.steps, self.guidance = every_n_steps, steps, guidance
        self.folder = Path(folder)
        self.cond = family.encode_prompts([p for p in self.prompts for _ in self.seeds])
        self.uncond = family.encode_prompts([""] * len(self.cond["prompt_embeds"])) if guidance > 1 else None
        self.base: torch.Tensor | None = None
        self.last_step = -1
        self.written: list[Path] = []

    # -- sampling --------------------------------------------------------------------------------------------------

    def _embeds(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        move = {k: v.to(device, dtype) for k, v in self.cond.items()}
        kwargs = {"prompt_embeds": move["prompt_embeds"]}
        if "pooled" in move:  # SDXL / SD3
            kwargs["pooled_prompt_embeds"] = move["pooled"]
        if self.uncond is not None:
            neg = {k: v.to(device, dtype) for k, v in self.uncond.items()}
            kwargs["negative_prompt_embeds"] = neg["prompt_embeds"]
            if "pooled" in neg:
                kwargs["negative_pooled_prompt_embeds"] = neg["pooled"]
        return kwargs

    @torch.no_grad()
    def sample(self, denoiser: torch.nn.Module) -> torch.Tensor:
        """Images ``[P·S, 3, R, R]`` in [0, 1] of every (prompt, seed) with ``denoiser`` in the pipeline."""
        pipe = self.family.pipe
        part = "transformer" if self.family.name == "sd3" else "unet"
        original, was_training = getattr(pipe, part), denoiser.training
        setattr(pipe, part, denoiser)
        denoiser.eval()
        try:
            param = next(denoiser.parameters())
            size = self.family.resolution
            latents = pipe(
                **self._embeds(param.device, param.dtype),
                height=size,
                width=size,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=[torch.Generator().manual_seed(s) for _ in self.prompts for s in self.seeds],
                output_type="latent",
            ).images
        finally:
            setattr(pipe, part, original)
            denoiser.train(was_training)
        vae = pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        pixels = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.device, vae.dtype)).sample
        return ((pixels.float().cpu() + 1) / 2).clamp(0, 1)

    def grid(self, base: torch.Tensor, tuned: torch.Tensor) -> np.ndarray:
        """The ``[P·R, 2·S·R, 3]`` uint8 grid: per prompt row, the seeds' base images then their tuned images."""
        p, s = len(self.prompts), len(self.seeds)
        both = torch.cat([base.view(p, s, *base.shape[1:]), tuned.view(p, s, *tuned.shape[1:])], dim=1)
        rows = both.permute(0, 3, 1, 4, 2).reshape(p * base.shape[-2], 2 * s * base.shape[-1], 3)
        return (rows * 255).round().to(torch.uint8).numpy()

    def run(self, trainer: L.Trainer, system: Any) -> Path:
        """Sample, write ``step-<global step>.png`` atomically, log it to TensorBoard; returns the path."""
        from PIL import Image

        if self.base is None:
            with system.reference_mode() as reference:
                self.base = self.sample(reference)
        image = self.grid(self.base, self.sample(system.unet))
        path = self.folder / f"step-{trainer.global_step:07d}.png"
        with atomic_write(path, "wb") as handle:
            Image.fromarray(image).save(handle, format="PNG")
        from lightning.pytorch.loggers import TensorBoardLogger

        for board in trainer.loggers:
            if isinstance(board, TensorBoardLogger):
                board.experiment.add_image("val/base_vs_tuned", image, trainer.global_step, dataformats="HWC")
        self.written.append(path)
        logger.info("validation grid %s", path)
        return path

    # -- Lightning hooks -------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Move the VAE beside the denoiser (the pipeline reads its device from its first module)."""
        self.family.pipe.vae.to(pl_module.device)
        self.family.pipe.set_progress_bar_config(disable=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """After every ``every_n_steps``-th optimizer step (once, whatever the accumulation), on rank 0."""
        step = trainer.global_step
        if step == self.last_step or step % self.every_n_steps or not step:
            return
        self.last_step = step
        if trainer.is_global_zero:
            self.run(trainer, pl_module)
