"""Tiny randomly initialised pipelines of each supported family, built from configs (tests, demos, benchmarks).

Nothing is downloaded: the tokenizers are byte-level CLIP BPEs without merges, every network has a few thousand
to a few hundred thousand parameters. ``pipeline.save_pretrained(folder)`` writes the real diffusers layout, so the
folders exercise exactly the loading, encoding and LoRA code that a real SD 1.5, SDXL or SD3 checkpoint goes through.
"""

from __future__ import annotations

from typing import Any

import torch


def byte_tokenizer(max_length: int = 16) -> Any:
    """A CLIP tokenizer over single bytes (no merges): tiny, offline and deterministic."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(ByteLevel.alphabet()):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _clip_config(vocab: int, hidden: int, projection: int = 16) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=2,
        num_hidden_layers=2,  # SDXL/SD3 read the penultimate hidden state
        max_position_embeddings=16,
        projection_dim=projection,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _vae(latent_channels: int = 4, resolution: int = 16, **config: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=resolution,
        **config,
    )


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> Any:
    """A tiny ``StableDiffusionPipeline`` (16 px images, 8 px latents), ε- or v-prediction."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer), 16))
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
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """A tiny ``StableDiffusionXLPipeline``: two CLIP text encoders, pooled embeddings and ``time_ids`` (16 px)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = byte_tokenizer(), byte_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer), 16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer), 16, projection=16))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # the two encoders' hidden states, concatenated
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=16 + 6 * time_dim,  # pooled + 6 time ids
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )


def tiny_sd3_pipeline(seed: int = 0) -> Any:
    """A tiny ``StableDiffusion3Pipeline`` (rectified flow, ``SD3Transformer2DModel``), without the T5 encoder.

    SD3 runs without its third (T5) encoder, as diffusers allows: its tokens are zeros. The VAE has SD3's shift.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = byte_tokenizer(), byte_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_clip_config(len(tokenizer), 16, projection=16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer), 16, projection=16))
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=32,  # CLIP-L and CLIP-G hidden states concatenated (T5 width in a real SD3)
        pooled_projection_dim=32,  # both pooled projections concatenated
        out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )


TINY_BUILDERS = {"sd": tiny_sd_pipeline, "sdxl": tiny_sdxl_pipeline, "sd3": tiny_sd3_pipeline}


def random_png(seed: int, width: int = 16, height: int = 16) -> bytes:
    """PNG bytes of a seeded random RGB image."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_pickapic_parquet(
    path: Any, n: int = 6, sizes: tuple[tuple[int, int], ...] = ((16, 16), (24, 20)), row_group_size: int = 1024
) -> Any:
    """A Pick-a-Pic-format Parquet file of ``n`` random pairs with mixed image sizes (width, height) and labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "caption": [f"a red square {i}" for i in range(n)],
        "jpg_0": [random_png(2 * i, *sizes[i % len(sizes)]) for i in range(n)],
        "jpg_1": [random_png(2 * i + 1, *sizes[(i + 1) % len(sizes)]) for i in range(n)],
        "label_0": [float(i % 2) for i in range(n)],
    }
    pq.write_table(pa.table(rows), path, row_group_size=row_group_size)
    return path
