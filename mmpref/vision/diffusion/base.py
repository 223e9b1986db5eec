"""The tiny text-conditioned digits diffusion model: diffusers ``UNet2DConditionModel`` + DDPM/DDIM schedulers.

Saved in diffusers' own folder layout, so ``UNet2DConditionModel.from_pretrained(folder / "unet")`` and
``DDPMScheduler.from_pretrained(folder / "scheduler")`` load it without mmpref:

.. code-block:: text

    folder/unet/config.json, folder/unet/diffusion_pytorch_model.safetensors
    folder/scheduler/scheduler_config.json
    folder/prompt_embeddings.safetensors      MiniLM embeddings of the training prompts
    folder/mmpref.json                         image size, training summary
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mmpref.data.io import atomic_folder
from mmpref.vision.diffusion.text import EMBED_DIM, PromptEncoder

PredictionType = Literal["epsilon", "v_prediction"]
DEFAULT_ASSET = Path(__file__).resolve().parents[3] / "assets" / "digit_diffusion"


def _diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(
            "diffusion needs diffusers; install mmpref's vision extra: pip install 'mmpref[vision]'"
        ) from err
    return diffusers


def make_unet(
    sample_size: int = 16,
    block_out_channels: Sequence[int] = (32, 32, 64),
    cross_attention_dim: int = EMBED_DIM,
    attention_head_dim: int = 8,
) -> nn.Module:
    """A small text-conditioned ``UNet2DConditionModel``.

    ResNet down/up blocks, a cross-attention mid block on the prompt, and the prompt's attention-pooled embedding
    added to the timestep embedding (``addition_embed_type="text"``).

    With the defaults (16 px, channels 32/32/64, one layer per block) it has 1.37 M parameters. Cross-attention
    sits only in the 4×4 mid block because on this CPU every attention block at finer resolutions roughly doubled
    the step time (0.37 s vs 0.65 s per batch of 64 under load); with cross-attention alone the prompt reached the
    model too weakly (48 % of samples classified as the requested digit after 1,200 steps), so the pooled text
    embedding also conditions every ResNet block through the time embedding, as in diffusers' text-time models.
    """
    diffusers = _diffusers()
    return diffusers.UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        addition_embed_type="text",
        addition_embed_type_num_heads=max(1, cross_attention_dim // 48),
    )


def make_noise_scheduler(prediction_type: PredictionType = "epsilon", steps: int = 1000) -> Any:
    """DDPM training scheduler: ``steps`` steps, cosine (``squaredcos_cap_v2``) betas, clipped samples."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    return _diffusers().DDPMScheduler(
        num_train_timesteps=steps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type,
        clip_sample=True,
    )


def training_target(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses: ε for epsilon-prediction, v = √ᾱ_t ε − √(1−ᾱ_t) x₀ for v-prediction."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}; use 'epsilon' or 'v_prediction'")


@torch.no_grad()
def sample(
    unet: nn.Module,
    scheduler: Any,
    cond: torch.Tensor,
    noise: torch.Tensor,
    steps: int = 25,
    batch_size: int = 256,
) -> torch.Tensor:
    """Deterministic DDIM sampling (η = 0) from given initial noise.

    Args:
        unet: the denoiser.
        scheduler: the training (DDPM) scheduler; its config builds the DDIM sampler.
        cond: prompt embeddings ``[N, S, D]``.
        noise: initial noise ``[N, C, H, W]`` (same noise → same sample: seeds are the caller's).
        steps: DDIM steps.
        batch_size: samples per UNet call.

    Returns:
        Samples ``[N, C, H, W]`` in [−1, 1].
    """
    ddim = _diffusers().DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    was_training = unet.training
    unet.eval()
    outs = []
    for start in range(0, len(noise), batch_size):
        x = noise[start : start + batch_size].clone()
        c = cond[start : start + batch_size]
        for t in ddim.timesteps:
            out = unet(x, t, encoder_hidden_states=c).sample
            x = ddim.step(out, t, x, eta=0.0).prev_sample
        outs.append(x.clamp(-1, 1))
    unet.train(was_training)
    return torch.cat(outs) if outs else noise.new_zeros(noise.shape)


def seeded_noise(count: int, seed: int, size: int = 16, channels: int = 1) -> torch.Tensor:
    """Initial noise ``[count, C, S, S]`` from its own generator: the same seed gives the same samples."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, channels, size, size, generator=generator)


@dataclass
class DigitDiffusion:
    """A loaded digits model: UNet, DDPM scheduler, prompt encoder and its metadata."""

    unet: nn.Module
    scheduler: Any
    prompts: PromptEncoder
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return int(self.unet.config.sample_size)

    def sample(self, prompts: Sequence[str], seed: int, steps: int = 25) -> torch.Tensor:
        """Sample one image per prompt from noise seeded by ``seed``: ``[N, 1, S, S]`` in [−1, 1]."""
        cond = self.prompts.encode(list(prompts))
        return sample(self.unet, self.scheduler, cond, seeded_noise(len(prompts), seed, self.size), steps)


def save_diffusion(folder: str | Path, unet: nn.Module, scheduler: Any, prompts: PromptEncoder, meta: dict) -> Path:
    """Write the model folder atomically: built in a temporary sibling, then renamed over ``folder``."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        prompts.save(tmp / "prompt_embeddings.safetensors")
        (tmp / "mmpref.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def load_diffusion(folder: str | Path | None = None) -> DigitDiffusion:
    """Load a model folder written by :func:`save_diffusion` (default: the shipped ``assets/digit_diffusion``).

    Raises:
        FileNotFoundError: naming the missing part and how to make it.
    """
    folder = Path(folder) if folder is not None else DEFAULT_ASSET
    if not (folder / "unet" / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no diffusion model here (expected unet/config.json); train one with "
            "scripts/train_digit_diffusion.py or pass the folder of a saved model"
        )
    meta = _check_folder(folder)
    diffusers = _diffusers()
    try:
        unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
        scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    except Exception as err:  # diffusers raises OSError/ValueError/TypeError for configs it cannot use
        from mmpref.errors import ModelFolderError

        first = (str(err).splitlines() or [err.__class__.__name__])[0][:300]
        raise ModelFolderError(
            folder, f"diffusers cannot load it ({err.__class__.__name__}: {first})", _REBUILD
        ) from None
    return DigitDiffusion(unet.eval(), scheduler, PromptEncoder(folder / "prompt_embeddings.safetensors"), meta)


_REBUILD = (
    "rebuild it (scripts/train_digit_diffusion.py writes the base model, `mmpref dpo --out DIR` a fine-tuned one) "
    "or copy the whole folder again"
)


def _check_folder(folder: Path) -> dict[str, Any]:
    """Check every file of a model folder before diffusers reads it; returns ``mmpref.json`` (or ``{}``).

    Raises:
        ModelFolderError: naming the damaged file (non-JSON config, truncated or NaN weights) and how to rebuild it.
    """
    from mmpref.errors import ModelFolderError
    from mmpref.modelfiles import load_safetensors, read_json_object

    read_json_object(folder / "unet" / "config.json", _REBUILD)
    for required in ("scheduler/scheduler_config.json", "unet/diffusion_pytorch_model.safetensors"):
        if not (folder / required).is_file():
            raise ModelFolderError(folder / required, "is missing", _REBUILD)
    read_json_object(folder / "scheduler" / "scheduler_config.json", _REBUILD)
    load_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors", _REBUILD)
    if (folder / "prompt_embeddings.safetensors").is_file():
        load_safetensors(folder / "prompt_embeddings.safetensors", _REBUILD)
    meta_path = folder / "mmpref.json"
    return read_json_object(meta_path, _REBUILD) if meta_path.is_file() else {}
