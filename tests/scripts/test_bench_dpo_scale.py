from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

# scripts/ is not a package: load the file itself and take its helpers.
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_dpo_scale.py"


def test_measured_reports_the_childs_own_peak_and_names_the_log_on_failure(tmp_path):
    measured = runpy.run_path(str(SCRIPT))["measured"]
    hold = "import time; b = bytearray(300 * 2**20); time.sleep(0.5)"  # held long enough to be sampled
    big = measured([sys.executable, "-c", hold], tmp_path / "big.log")
    small = measured([sys.executable, "-c", "pass"], tmp_path / "small.log")
    # bytearray() zero-fills, so its 300 MiB are resident; a bare interpreter is far below that, even when this test
    # process is large (a child's ru_maxrss would inherit this process's peak at exec)
    assert big["peak_rss_mib"] >= 300 > small["peak_rss_mib"]
    assert big["cpu_s"] >= 0 and big["wall_s"] > 0
    with pytest.raises(SystemExit, match="fail.log"):
        measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "fail.log")


def test_write_pairs_streams_pickapic_row_groups_that_mmpref_reads(tmp_path):
    import pyarrow.parquet as pq

    from mmpref.vision.diffusion.data import iter_pickapic

    path = tmp_path / "pairs.parquet"
    runpy.run_path(str(SCRIPT))["write_pairs"](path, 1200, [(64, 64), (96, 80)])
    meta = pq.ParquetFile(path).metadata
    assert (meta.num_rows, meta.num_row_groups) == (1200, 2)  # written 1,000 rows at a time
    pairs = list(iter_pickapic(path, "drop"))
    assert len(pairs) == 1200 and len({p.key for p in pairs}) == 1200


def test_stand_in_build_matches_the_real_caches_layout_shapes_and_keys(tmp_path):
    pytest.importorskip("diffusers")
    import argparse

    from safetensors.torch import load_file

    from mmpref.vision.diffusion.pipelines import PipelineDPOConfig, prepare_cache
    from mmpref.vision.diffusion.tiny import tiny_sd_pipeline

    script = runpy.run_path(str(SCRIPT))
    pipe, parquet = tmp_path / "pipe", tmp_path / "pairs.parquet"
    tiny_sd_pipeline().save_pretrained(pipe)
    script["write_pairs"](parquet, 10, [(32, 32), (40, 36)])
    stand_in = argparse.Namespace(
        pipeline=str(pipe), parquet=str(parquet), cache_dir=str(tmp_path / "s"), encode_batch=4
    )
    script["standin_build"](stand_in)
    cfg = PipelineDPOConfig(pipeline=str(pipe), pairs=str(parquet), ties="drop", cache_dir=str(tmp_path / "r"))
    _, real = prepare_cache(cfg)
    (real_shard,) = real.folder.glob("shard-*.safetensors")
    (fake_shard,) = (tmp_path / "s" / real.folder.name).glob("shard-*.safetensors")  # the pipeline's own namespace
    real_t, fake_t = load_file(real_shard), load_file(fake_shard)
    assert set(real_t) == set(fake_t)
    for name, tensor in real_t.items():
        assert (fake_t[name].shape, fake_t[name].dtype) == (tensor.shape, tensor.dtype), name
    # the same pairs, crops and order; only the encoders' outputs are stand-ins
    assert fake_t["keys"].equal(real_t["keys"]) and fake_t["micro_w"].equal(real_t["micro_w"])
    assert not fake_t["x_w"].equal(real_t["x_w"])
