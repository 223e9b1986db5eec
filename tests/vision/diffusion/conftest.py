from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")


@pytest.fixture
def tiny_unet():
    """A randomly initialised 8 px UNet2DConditionModel with a cross-attention mid block (fast on one thread)."""
    from mmpref.vision.diffusion.base import make_unet

    torch.manual_seed(0)
    return make_unet(sample_size=8, block_out_channels=(8, 8, 16), cross_attention_dim=12, attention_head_dim=4)


@pytest.fixture
def scheduler():
    from mmpref.vision.diffusion.base import make_noise_scheduler

    return make_noise_scheduler("epsilon", steps=100)


@pytest.fixture
def pair_batch():
    def make(b: int = 4, size: int = 8, dim: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {
            "x_w": torch.rand(b, 1, size, size, generator=g) * 2 - 1,
            "x_l": torch.rand(b, 1, size, size, generator=g) * 2 - 1,
            "cond": torch.randn(b, 1, dim, generator=g),
        }

    return make
