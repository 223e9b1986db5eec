"""Real diffusers pipelines: LoRA / full Diffusion-DPO from a local folder, diffusers-loadable LoRA, bad input."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmpref.data.io import DataError
from mmpref.vision.diffusion.pipelines import (
    PipelineError,
    dpo_finetune,
    finetune_pipeline,
    save_finetuned,
    tiny_random_pipeline,
)


def _png(seed: int, size: int = 16) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet(path, rows):
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def _rows(n: int = 6, size: int = 16):
    return [
        {"caption": f"a red square {i}", "jpg_0": _png(2 * i, size), "jpg_1": _png(2 * i + 1, size), "label_0": 1.0}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sd")
    tiny_random_pipeline(seed=0).save_pretrained(folder)
    return folder


def test_lora_weights_load_unchanged_in_diffusers(pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    pairs = _parquet(tmp_path / "pairs.parquet", _rows())
    family, system = dpo_finetune(pipeline_dir, pairs, ties="drop", mode="lora", steps=3, batch_size=3, lr=1e-2)
    assert system.ref_unet is None  # one UNet: the reference is the base with adapters disabled
    out = save_finetuned(family, system, "lora", tmp_path / "lora")
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    fresh = StableDiffusionPipeline.from_pretrained(pipeline_dir, safety_checker=None, requires_safety_checker=False)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 16, 16)
    with torch.no_grad():
        base_out = fresh.unet(x, t, encoder_hidden_states=c).sample
        fresh.load_lora_weights(out)
        loaded = fresh.unet(x, t, encoder_hidden_states=c).sample
        tuned = system.unet(x, t, encoder_hidden_states=c).sample
    assert not torch.allclose(base_out, tuned)
    torch.testing.assert_close(loaded, tuned, rtol=1e-5, atol=1e-6)


def test_full_finetune_writes_a_loadable_pipeline(pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    pairs = _parquet(tmp_path / "pairs.parquet", _rows(4))
    out = finetune_pipeline(pipeline_dir, pairs, tmp_path / "full", ties="drop", mode="full", steps=2, lr=1e-3)
    tuned = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    base = StableDiffusionPipeline.from_pretrained(pipeline_dir, safety_checker=None, requires_safety_checker=False)
    changed = [not torch.equal(a, b) for a, b in zip(tuned.unet.parameters(), base.unet.parameters(), strict=True)]
    assert any(changed)
    image = tuned(["a red square"], num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_missing_image_row_is_named_and_nothing_written(pipeline_dir, tmp_path):
    rows = _rows(3)
    rows[1]["jpg_1"] = None
    with pytest.raises(DataError, match=r"row 1: column 'jpg_1'"):
        finetune_pipeline(pipeline_dir, _parquet(tmp_path / "p.parquet", rows), tmp_path / "o", ties="drop", steps=1)
    assert not (tmp_path / "o").exists()


def test_ties_error_or_drop(pipeline_dir, tmp_path):
    rows = _rows(3)
    rows[2]["label_0"] = 0.5
    path = _parquet(tmp_path / "p.parquet", rows)
    with pytest.raises(DataError, match="tie"):
        finetune_pipeline(pipeline_dir, path, tmp_path / "o", ties="error", steps=1)
    with pytest.raises(ValueError, match="ties must be 'drop' or 'error'"):
        finetune_pipeline(pipeline_dir, path, tmp_path / "o", ties="keep", steps=1)  # type: ignore[arg-type]
    all_tied = _parquet(tmp_path / "t.parquet", [r | {"label_0": 0.5} for r in _rows(2)])
    with pytest.raises(DataError, match="no pair left after dropping ties"):
        finetune_pipeline(pipeline_dir, all_tied, tmp_path / "o", ties="drop", steps=1)
    assert not (tmp_path / "o").exists()


def test_mismatched_resolution_is_named(pipeline_dir, tmp_path):
    rows = _rows(2)
    rows[0]["jpg_0"] = _png(99, size=24)
    path = _parquet(tmp_path / "p.parquet", rows)
    with pytest.raises(DataError, match=r"row 0: winner image is 24×24, the pipeline needs 16×16; pass resize="):
        finetune_pipeline(pipeline_dir, path, tmp_path / "o", ties="drop", steps=1, resize="refuse")
    assert not (tmp_path / "o").exists()


def test_pipeline_dir_without_unet(pipeline_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pipeline_dir, broken)
    shutil.rmtree(broken / "unet")
    pairs = _parquet(tmp_path / "p.parquet", _rows(2))
    with pytest.raises(PipelineError, match="missing unet"):
        finetune_pipeline(broken, pairs, tmp_path / "o", ties="drop", steps=1)
    assert not (tmp_path / "o").exists()
