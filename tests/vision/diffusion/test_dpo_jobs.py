"""The diffusion CLI jobs on a tiny saved model."""

from __future__ import annotations

import torch
from PIL import Image

from mmpref.cli import main


def test_sample_job_writes_a_side_by_side_grid(tiny_unet, scheduler, tmp_path):
    from mmpref.vision.diffusion.base import save_diffusion
    from mmpref.vision.diffusion.text import PromptEncoder

    encoder = PromptEncoder()
    encoder._cache.update({"a seven": torch.ones(12), "a one": -torch.ones(12)})
    folder = save_diffusion(tmp_path / "m", tiny_unet, scheduler, encoder, {})
    out = tmp_path / "grid.png"
    args = ["sample", "a seven", "a one", "--model", str(folder), "--compare", str(folder), "--n", "3"]
    assert main([*args, "--steps", "2", "--out", str(out)]) == 0
    with Image.open(out) as image:
        # 2 prompts × 2 models = 4 rows of 3 tiles (8 px + 2 px gaps), scaled ×4
        assert image.size == ((3 * 10 - 2) * 4, (4 * 10 - 2) * 4)


def test_recipes_parse_into_configs(tmp_path):
    from pathlib import Path

    import pytest

    from mmpref.losses import get_loss
    from mmpref.vision.diffusion.digits import get_taste
    from mmpref.vision.diffusion.jobs import load_recipe

    recipes = sorted(Path(__file__).resolve().parents[3].joinpath("recipes", "diffusion").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        cfg = load_recipe(recipe)
        get_loss(cfg.loss), get_taste(cfg.taste)
    bad = tmp_path / "bad.yaml"
    bad.write_text("taste: ink\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['learning_rate'\]; valid fields"):
        load_recipe(bad)
