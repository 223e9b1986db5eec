"""Streamed Pick-a-Pic data, resize policies and the on-disk latent + text cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmpref.data.io import DataError
from mmpref.vision.diffusion.data import iter_pickapic, prepare_image
from mmpref.vision.diffusion.families import load_family
from mmpref.vision.diffusion.latent_cache import CachedPairs, build_cache, cached_keys
from mmpref.vision.diffusion.tiny import random_png as png
from mmpref.vision.diffusion.tiny import tiny_pickapic_parquet as write_pairs
from mmpref.vision.diffusion.tiny import tiny_sd_pipeline


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return load_family(folder)


def test_resize_center_random_and_refuse():
    rng = np.random.default_rng(0)
    wide = png(0, width=40, height=20)
    pixels, micro = prepare_image(wide, 16, "center", rng)
    assert pixels.shape == (3, 16, 16) and micro == (20, 40, 0, 8)  # 20×40 → 16×32, centre crop at left 8
    assert pixels.min() >= -1 and pixels.max() <= 1
    lefts = {prepare_image(wide, 16, "random", rng)[1][3] for _ in range(20)}
    assert len(lefts) > 3 and all(0 <= x <= 16 for x in lefts)
    assert prepare_image(wide, 16, "refuse", rng) == (None, prepare_image(wide, 16, "refuse", rng)[1])
    assert "is 40×20, the pipeline needs 16×16" in prepare_image(wide, 16, "refuse", rng)[1]
    assert "does not decode" in prepare_image(b"not an image", 16, "center", rng)[1]


def test_parquet_is_streamed_in_batches_with_labels_and_ties(tmp_path):
    rows = [
        {"caption": f"c{i}", "jpg_0": png(2 * i), "jpg_1": png(2 * i + 1), "label_0": [1.0, 0.0, 0.5][i % 3]}
        for i in range(9)
    ]
    path = tmp_path / "p.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False, row_group_size=2)
    pairs = list(iter_pickapic(path, "drop", batch_rows=2))
    assert [p.row for p in pairs] == [0, 1, 3, 4, 6, 7]
    assert pairs[0].winner == rows[0]["jpg_0"] and pairs[1].winner == rows[1]["jpg_1"]  # label 0 → image 1 wins
    with pytest.raises(DataError, match=r"row 2: label_0 = 0.5 is a tie"):
        list(iter_pickapic(path, "error"))


def test_cache_is_built_once_reused_by_content_and_read_back_by_shard(family, tmp_path):
    pairs = write_pairs(tmp_path / "a.parquet", n=7)
    folder = tmp_path / "cache"
    first = build_cache(family, pairs, folder, ties="drop", resize="center", encode_batch=3, shard_size=3)
    assert (first.pairs, first.encoded, first.reused) == (7, 7, 0)
    assert len(list(folder.glob("shard-*.safetensors"))) == 3
    again = build_cache(family, pairs, folder, ties="drop", resize="center", encode_batch=3, shard_size=3)
    assert (again.encoded, again.reused) == (0, 7)
    frame = pd.read_parquet(pairs)
    frame.loc[2, "caption"] = "a changed caption"  # a new pair by content; the other six hit the cache
    frame.to_parquet(tmp_path / "b.parquet", index=False)
    third = build_cache(family, tmp_path / "b.parquet", folder, ties="drop", resize="center", shard_size=3)
    assert (third.encoded, third.reused) == (1, 6)
    assert len(cached_keys(folder)) == 8

    data = CachedPairs(folder, third.keys, seed=0)
    assert len(data) == 7
    epoch1, epoch2 = list(data), list(data)
    assert len(epoch1) == len(epoch2) == 7
    assert [e["x_w"].sum() for e in epoch1] != [e["x_w"].sum() for e in epoch2]  # reshuffled per epoch
    item = epoch1[0]
    assert item["x_w"].shape == (4, 8, 8) and item["cond"]["prompt_embeds"].shape == (16, 16)
    ordered = CachedPairs(folder, first.keys, shuffle=False)
    assert len(ordered) == 7 and torch.isfinite(torch.stack([e["x_l"] for e in ordered])).all()


def test_bad_images_are_all_named_and_good_pairs_stay_cached(family, tmp_path):
    frame = pd.read_parquet(write_pairs(tmp_path / "a.parquet", n=4))
    frame.loc[1, "jpg_1"] = b"broken"
    frame.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(DataError, match=r"row 1: (winner|loser) image does not decode"):
        build_cache(family, tmp_path / "bad.parquet", tmp_path / "c", ties="drop", resize="center")
    assert len(cached_keys(tmp_path / "c")) == 3  # an interrupted build keeps its finished work
