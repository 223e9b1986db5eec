"""Diffusion-DPO on real diffusers Stable-Diffusion-format pipelines from a local folder, LoRA or full fine-tune.

Input: a pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) and Pick-a-Pic-style Parquet pairs (:func:`mmpref.data.io.read_pickapic_parquet`). Images are
encoded once by the VAE (latents × ``scaling_factor``), prompts once by the text encoder; the UNet is fine-tuned by
:class:`~mmpref.vision.diffusion.system.DiffusionDPOSystem`. Output: with LoRA, ``pytorch_lora_weights.safetensors``
in diffusers' format (``pipeline.load_lora_weights(out)`` loads it unchanged); full, a whole pipeline folder.
Everything is validated before training starts and written atomically, so bad input leaves nothing behind.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmpref.data.io import DataError, atomic_folder, read_pickapic_parquet
from mmpref.data.records import PreferencePair
from mmpref.reward.datamodule import DictDataset

logger = logging.getLogger(__name__)
FineTuneMode = Literal["lora", "full"]
DPOTiePolicy = Literal["drop", "error"]
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SD_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class PipelineError(ValueError):
    """A pipeline folder that cannot be fine-tuned; the message names the folder, the missing part and the fix."""


def check_pipeline_dir(folder: str | Path) -> Path:
    """Check that ``folder`` is a Stable-Diffusion-format pipeline with every part DPO needs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: not a folder; pass the local folder of a diffusers pipeline")
    missing = [part for part in PIPELINE_PARTS if not (folder / part).is_dir()]
    if not (folder / "model_index.json").is_file():
        missing.insert(0, "model_index.json")
    if missing:
        raise PipelineError(
            f"{folder}: not a Stable-Diffusion-format pipeline, missing {', '.join(missing)}; save one with "
            "pipeline.save_pretrained(folder) (a UNet-only folder cannot be fine-tuned here)"
        )
    return folder


def tiny_random_pipeline(seed: int = 0) -> Any:
    """A tiny randomly initialised ``StableDiffusionPipeline`` (16 px images, 8 px latents), built from configs.

    For tests and demos only: no weights are downloaded. The tokenizer is a byte-level CLIP BPE without merges.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=16,
            projection_dim=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_dpo_pairs(path: str | Path, ties: DPOTiePolicy) -> list[PreferencePair]:
    """Pick-a-Pic Parquet pairs for DPO: every image must decode; ties are dropped (logged) or an error.

    Raises:
        DataError: bad rows (missing/undecodable images, bad labels), a tie with ``ties="error"``, or no pair left.
        ValueError: ``ties="keep"``: DPO needs a winner, so soft ties cannot be kept.
    """
    if ties not in ("drop", "error"):
        raise ValueError(f"ties must be 'drop' or 'error' for DPO (a tie has no winner to prefer), got {ties!r}")
    pairs = read_pickapic_parquet(path, ties="keep")
    tied = [p.id for p in pairs if p.is_tie]
    if tied and ties == "error":
        raise DataError(
            path, [f"record {i!r}: label_0 = 0.5 is a tie; DPO needs a winner (pass ties='drop')" for i in tied]
        )
    if tied:
        logger.info("%s: dropped %d tied pair(s)", path, len(tied))
    kept = [p for p in pairs if not p.is_tie]
    if not kept:
        raise DataError(path, ["no pair left after dropping ties; DPO needs pairs with a winner"])
    return kept


def _image_array(item: Any) -> np.ndarray:
    from PIL import Image

    source = io.BytesIO(item) if isinstance(item, bytes) else item
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0


def pairs_to_pixels(pairs: Sequence[PreferencePair], path: str | Path, resolution: int) -> tuple[torch.Tensor, ...]:
    """Winner and loser pixels ``[N, 3, R, R]`` in [−1, 1]; every image must be ``resolution`` square.

    Raises:
        DataError: naming every pair whose images have another size (nothing is resized silently).
    """
    problems, winners, losers = [], [], []
    for pair in pairs:
        w, lo = _image_array(pair.winner), _image_array(pair.loser)
        for name, arr in (("winner", w), ("loser", lo)):
            if arr.shape[:2] != (resolution, resolution):
                problems.append(
                    f"record {pair.id!r}: {name} image is {arr.shape[1]}×{arr.shape[0]}, the pipeline needs "
                    f"{resolution}×{resolution}; resize the images or pick the matching pipeline"
                )
        winners.append(w)
        losers.append(lo)
    if problems:
        raise DataError(path, problems)
    to_tensor = lambda xs: torch.tensor(np.stack(xs)).permute(0, 3, 1, 2)  # noqa: E731
    return to_tensor(winners), to_tensor(losers)


@torch.no_grad()
def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Text-encoder hidden states ``[N, L, D]`` as the pipeline computes them (padded to the max length)."""
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids)[0]


@torch.no_grad()
def encode_images(vae: Any, pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """VAE latents × scaling factor (a seeded draw from the posterior, as in the training scripts)."""
    generator = torch.Generator().manual_seed(seed)
    latents = vae.encode(pixels).latent_dist.sample(generator)
    return latents * vae.config.scaling_factor


def finetune_pipeline(pipeline_dir: str | Path, pairs_path: str | Path, out_dir: str | Path, **kwargs: Any) -> Path:
    """Fine-tune (:func:`dpo_finetune`, same keyword arguments) and write the result to ``out_dir`` atomically.

    Returns:
        ``out_dir``: LoRA weights (``pytorch_lora_weights.safetensors``) or, for ``mode="full"``, a pipeline folder.
    """
    pipe, system = dpo_finetune(pipeline_dir, pairs_path, **kwargs)
    return save_finetuned(pipe, system, kwargs.get("mode", "lora"), out_dir)


def dpo_finetune(
    pipeline_dir: str | Path,
    pairs_path: str | Path,
    *,
    ties: DPOTiePolicy,
    mode: FineTuneMode = "lora",
    steps: int = 100,
    batch_size: int = 4,
    beta: float = 5000.0,
    lr: float = 1e-4,
    loss: str = "bradley_terry",
    lora_rank: int = 4,
    seed: int = 0,
) -> Path:
    """Fine-tune a local SD-format pipeline's UNet on Pick-a-Pic pairs with Diffusion-DPO (nothing is written).

    Args:
        pipeline_dir: folder written by ``pipeline.save_pretrained``.
        pairs_path: Pick-a-Pic-style Parquet (``caption``, ``jpg_0``, ``jpg_1``, ``label_0``).
        ties: ``"drop"`` or ``"error"``: what a tied pair does.
        mode: ``"lora"`` (adapters; reference = adapters disabled) or ``"full"`` (frozen copy as reference).
        steps: optimizer steps.
        batch_size: pairs per step.
        beta: β_dpo of the official code (the core loss gets β/2).
        lr: AdamW learning rate.
        loss: a pairwise loss name of :mod:`mmpref.losses`.
        lora_rank: LoRA rank (``mode="lora"``).
        seed: seed of the VAE draw, shuffling, noise and timesteps.

    Returns:
        The loaded pipeline and the trained system (its ``unet`` is the pipeline's UNet, with adapters for LoRA).
    """
    import lightning as L
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from mmpref.reward.trainers import quick_trainer, quiet_lightning
    from mmpref.vision.diffusion.system import DiffusionDPOSystem

    if mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}")
    folder = check_pipeline_dir(pipeline_dir)
    pairs = load_dpo_pairs(pairs_path, ties)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    resolution = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    x_w, x_l = pairs_to_pixels(pairs, pairs_path, resolution)
    cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [p.prompt or "" for p in pairs])
    data = DictDataset(
        x_w=encode_images(pipe.vae, x_w, seed), x_l=encode_images(pipe.vae, x_l, seed + 1), cond=cond.float()
    )
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    L.seed_everything(seed, verbose=False)
    quiet_lightning()
    system = DiffusionDPOSystem(
        pipe.unet,
        scheduler,
        loss=loss,
        beta=beta,
        lr=lr,
        reference="lora" if mode == "lora" else "copy",
        lora_rank=lora_rank,
        lora_targets=SD_LORA_TARGETS,
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    quick_trainer(max_epochs=10_000, max_steps=steps, gradient_clip_val=1.0).fit(system, loader)
    return pipe, system.eval()


def save_finetuned(pipe: Any, system: Any, mode: FineTuneMode, out_dir: str | Path) -> Path:
    """Write LoRA weights in diffusers' format, or the whole pipeline with the tuned UNet, atomically."""
    with atomic_folder(out_dir) as tmp:
        _save(pipe, system, mode, tmp)
    return Path(out_dir)


def _save(pipe: Any, system: Any, mode: FineTuneMode, folder: Path) -> None:
    if mode == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(system.unet))
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    else:
        pipe.unet = system.unet
        pipe.save_pretrained(folder, safe_serialization=True)
