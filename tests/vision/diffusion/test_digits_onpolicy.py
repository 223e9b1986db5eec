"""Digits data and tastes, prompt-embedding cache, model folder save/load, on-policy pair and list building."""

from __future__ import annotations

import pytest
import torch

from mmpref.vision.diffusion.digits import get_taste, ink_taste, load_digits, prompt_for, random_shift, slant_taste
from mmpref.vision.diffusion.onpolicy import Candidates, build_lists, build_pairs, sample_candidates
from mmpref.vision.diffusion.text import PromptEncoder, load_embedding_cache, save_embedding_cache


def test_digits_are_real_and_scaled():
    data = load_digits(16)
    assert data.images.shape == (1797, 1, 16, 16)
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert torch.bincount(data.labels).min() > 150
    assert set(data.ink_tercile.tolist()) == {0, 1, 2}
    heavy, light = data.ink_tercile == 2, data.ink_tercile == 0
    assert ink_taste(data.images[heavy]).mean() > ink_taste(data.images[light]).mean()


def test_tastes_by_hand():
    blank = -torch.ones(1, 1, 4, 4)
    half = blank.clone()
    half[..., :2, :] = 1.0  # top half white: intensity 0.5
    assert torch.allclose(ink_taste(torch.cat([blank, half])), torch.tensor([0.0, 0.5]))
    lean_right, lean_left = -torch.ones(1, 1, 5, 5), -torch.ones(1, 1, 5, 5)
    for i in range(5):
        lean_right[0, 0, i, 4 - i] = 1.0  # "/" : the top is to the right
        lean_left[0, 0, i, i] = 1.0  # "\"
    assert slant_taste(lean_right) > 0 > slant_taste(lean_left)
    assert torch.equal(get_taste("thin")(half), -ink_taste(half))
    with pytest.raises(ValueError, match="valid tastes: ink, thin, slant"):
        get_taste("bold")


def test_prompts_and_shift():
    assert prompt_for(7, "a handwritten {word}, {style}", "thick strokes") == "a handwritten seven, thick strokes"
    assert prompt_for(7, "a handwritten {word}, {style}") == "a handwritten seven"
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(20, 1, 1, 1)
    shifted = random_shift(x, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and (shifted == -1).any()  # background fill where shifted in


def test_embedding_cache_roundtrip(tmp_path):
    cache = {"a": torch.arange(384.0), "b": -torch.ones(384)}
    save_embedding_cache(cache, tmp_path / "e.safetensors")
    loaded = load_embedding_cache(tmp_path / "e.safetensors")
    assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], cache["a"])
    encoder = PromptEncoder(tmp_path / "e.safetensors")
    assert encoder.encode(["b", "a"]).shape == (2, 1, 384)  # cached: MiniLM is never loaded here


def _candidates(p: int = 3, n: int = 8) -> Candidates:
    images = torch.rand(p, n, 1, 4, 4)
    return Candidates(images, ink_taste(images.flatten(0, 1)).view(p, n), torch.randn(p, 1, 5), ["x"] * p)


@pytest.mark.parametrize("pairing", ["random", "best_worst"])
def test_pairs_prefer_the_higher_score_within_a_prompt(pairing):
    c = _candidates()
    data = build_pairs(c, pairing=pairing, pairs_per_sample=2, group=4, user=1)
    t = data.tensors
    assert (ink_taste(t["x_w"]) > ink_taste(t["x_l"])).all()
    assert len(t["x_w"]) == (3 * 8 * 2 if pairing == "random" else 3 * 2)
    assert (t["user"] == 1).all()
    # each pair's conditioning is its own prompt's
    for w, cond in zip(t["x_w"], t["cond"], strict=True):
        row = next(i for i in range(3) if any(torch.equal(w, x) for x in c.images[i]))
        assert torch.equal(cond, c.cond[row])


def test_gap_filter_and_lists():
    c = _candidates()
    all_pairs = build_pairs(c, pairs_per_sample=4)
    filtered = build_pairs(c, pairs_per_sample=4, min_gap_sd=1.0)
    assert 0 < len(filtered) < len(all_pairs)
    gap = ink_taste(filtered.tensors["x_w"]) - ink_taste(filtered.tensors["x_l"])
    assert gap.min() > 0
    with pytest.raises(ValueError, match="no pair passed"):
        build_pairs(c, min_gap_sd=1e6)
    lists = build_lists(c, k=4)
    assert lists.tensors["x"].shape == (6, 4, 1, 4, 4)
    assert torch.allclose(lists.tensors["targets"], ink_taste(lists.tensors["x"].flatten(0, 1)).view(6, 4))


def test_sample_candidates_and_model_folder_roundtrip(tiny_unet, scheduler, tmp_path):
    from mmpref.vision.diffusion.base import load_diffusion, save_diffusion

    cond = torch.randn(2, 1, 12)
    c = sample_candidates(tiny_unet, scheduler, cond, ["a", "b"], per_prompt=3, scorer=ink_taste, seed=5, steps=2)
    assert c.images.shape == (2, 3, 1, 8, 8) and c.scores.shape == (2, 3)
    again = sample_candidates(tiny_unet, scheduler, cond, ["a", "b"], per_prompt=3, scorer=ink_taste, seed=5, steps=2)
    assert torch.equal(c.images, again.images)  # seeded: the same noise gives the same samples
    encoder = PromptEncoder()
    encoder._cache["p"] = torch.zeros(12)
    folder = save_diffusion(tmp_path / "m", tiny_unet, scheduler, encoder, {"note": 1})
    loaded = load_diffusion(folder)
    assert loaded.meta == {"note": 1} and "p" in loaded.prompts
    saved, restored = tiny_unet.state_dict(), loaded.unet.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([3])
    with torch.no_grad():
        # the same weights and config; not bit for bit: on some CPUs the loaded tensors' layout takes other kernels
        # (seen here: 4e-7 apart)
        torch.testing.assert_close(
            loaded.unet(x, t, encoder_hidden_states=cond[:1]).sample,
            tiny_unet(x, t, encoder_hidden_states=cond[:1]).sample,
            rtol=1e-5,
            atol=1e-5,
        )
    with pytest.raises(FileNotFoundError, match="no diffusion model here"):
        load_diffusion(tmp_path / "nothing")
