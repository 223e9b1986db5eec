"""Pipeline DPO's distributed, validation and resume knobs: even rank split, DDP parity, the grid, exact resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpref.vision.diffusion import latent_cache
from mmpref.vision.diffusion.latent_cache import CachedPairs, PairsLoader, global_batch_positions, resume_point
from mmpref.vision.diffusion.pipelines import PipelineDPOConfig, prepare_cache, train
from mmpref.vision.diffusion.tiny import TINY_BUILDERS, tiny_pickapic_parquet


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny SD pipeline and 7 pairs cached in shards of 3, 3 and 1 (uneven on purpose)."""
    root = tmp_path_factory.mktemp("knobs")
    TINY_BUILDERS["sd"]().save_pretrained(root / "sd")
    tiny_pickapic_parquet(root / "pairs.parquet", n=7)
    cfg = settings(root, "prep")
    _, cache = prepare_cache(cfg)
    return root, cache


def settings(root: Path, tag: str, **changes) -> PipelineDPOConfig:
    base = dict(
        pipeline=str(root / "sd"), pairs=str(root / "pairs.parquet"), ties="error", cache_dir=str(root / "cache"),
        shard_size=3, steps=3, batch_size=4, lr=1e-3, accelerator="cpu", devices=1, log_dir=str(root / tag),
        log_every_n_steps=1,
    )  # fmt: skip
    return PipelineDPOConfig(**(base | changes))


def losses(log_dir: Path) -> list[float]:
    """The logged train/loss per step from the CSV logger."""
    (path,) = log_dir.rglob("metrics.csv")
    return [float(r["train/loss"]) for r in csv.DictReader(path.open()) if r["train/loss"]]


def max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_global_batches_are_split_evenly_disjointly_and_deterministically(inputs):
    root, cache = inputs
    assert [len(k) for k in CachedPairs(cache.folder).kept] == [3, 3, 1]  # shards of uneven size
    # positions: rank r takes the r-th run of b in each global batch of W·b; the last one wraps around
    ranks = [global_batch_positions(7, 2, 2, r) for r in range(2)]
    assert ranks[0].tolist() == [[0, 1], [4, 5]] and ranks[1].tolist() == [[2, 3], [6, 7]]
    # the data: two ranks of batch 2 read exactly one process's batches of 4, halves of each, in the same order
    one = list(PairsLoader(CachedPairs(cache.folder, cache.keys, seed=5, batch_size=4)))
    two = [list(PairsLoader(CachedPairs(cache.folder, cache.keys, seed=5, rank=r, world_size=2, batch_size=2)))
           for r in range(2)]  # fmt: skip
    assert len(one) == len(two[0]) == len(two[1]) == 2  # no rank runs out early (the old round-robin gave 6 vs 3)
    for g, batch in enumerate(one):
        for field in ("seed", "x_w", "x_l"):
            assert torch.equal(batch[field], torch.cat([two[0][g][field], two[1][g][field]]))
        assert torch.equal(batch["cond"]["prompt_embeds"], torch.cat([t[g]["cond"]["prompt_embeds"] for t in two]))
    seeds = torch.cat([b["seed"] for b in one])
    assert len(set(seeds.tolist())) == 8  # the wrapped-around pair gets its own noise seed
    assert torch.equal(one[1]["x_w"][-1], one[0]["x_w"][0])  # position 7 is pair 0 again (padding)
    # workers: each reads every n-th batch and the loader returns them in order, so the batches are the same
    workers = list(PairsLoader(CachedPairs(cache.folder, cache.keys, seed=5, batch_size=4), workers=2))
    assert all(
        torch.equal(a["x_w"], b["x_w"]) and torch.equal(a["seed"], b["seed"])
        for a, b in zip(one, workers, strict=True)
    )
    # deterministic per (seed, epoch); the next epoch reshuffles; a pass can start at a given batch
    loader = PairsLoader(CachedPairs(cache.folder, cache.keys, seed=5, batch_size=4))
    first, second = list(loader), list(loader)
    assert all(torch.equal(a["seed"], b["seed"]) for a, b in zip(first, one, strict=True))
    assert not torch.equal(first[0]["x_w"], second[0]["x_w"])
    resumed = list(PairsLoader(CachedPairs(cache.folder, cache.keys, seed=5, batch_size=4), epoch=1, start=1))
    assert len(resumed) == 1 and torch.equal(resumed[0]["seed"], second[1]["seed"])
    # an epoch of M batches makes ceil(M / accumulate) optimizer steps (Lightning steps at the epoch's end)
    assert [resume_point(s, 5, 2) for s in (0, 2, 3, 4, 7)] == [(0, 0), (0, 4), (1, 0), (1, 2), (2, 2)]


@pytest.fixture
def one_thread():
    """Forked ranks must not inherit an OpenMP pool in use (libgomp is not fork-safe); one thread avoids it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ddp_on_two_cpu_processes_equals_one_process_with_the_same_global_batch(inputs, one_thread):
    root, _ = inputs
    # ddp_fork: the ranks are forked from this process (no re-import, a few seconds); gloo on CPU
    _, one, report_one = train(settings(root, "one", batch_size=4))
    grid = dict(validation_prompts=["a red square"], validation_every_n_steps=3, validation_steps=1)
    _, two, report_two = train(settings(root, "two", batch_size=2, devices=2, strategy="ddp_fork", **grid))
    assert [p.name for p in (root / "two" / "validation").iterdir()] == ["step-0000003.png"]  # rank 0's grid
    assert report_one["steps"] == report_two["steps"] == 3 and report_two["global_rank"] == 0
    # a different global batch (2 instead of 4 pairs per step) is the yardstick of what "different" looks like
    _, other, _ = train(settings(root, "other", batch_size=2))
    parity, yardstick = (
        max_gap(one.trainable_state(), two.trainable_state()),
        max_gap(one.trainable_state(), other.trainable_state()),
    )
    assert parity < 1e-4 and yardstick > 50 * parity, (parity, yardstick)
    assert np.allclose(losses(root / "one"), losses(root / "two"), rtol=0, atol=2e-4)  # rank-averaged loss
    assert len(losses(root / "one")) == 3 and not np.allclose(losses(root / "one"), losses(root / "other"), atol=2e-4)


def test_validation_grid_every_step_writes_base_and_tuned_images(inputs):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = inputs
    cfg = settings(
        root, "grid", steps=2, lr=3e-2, logger="tensorboard", validation_prompts=["a red square", "a blue circle"],
        validation_seeds=[0, 1], validation_every_n_steps=1, validation_steps=2,
    )  # fmt: skip
    family, _, _ = train(cfg)
    grids = sorted((root / "grid" / "validation").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-0000001.png", "step-0000002.png"]
    r = family.resolution
    images = [np.asarray(Image.open(g)) for g in grids]
    assert all(im.shape == (2 * r, 2 * 2 * r, 3) for im in images)  # rows: prompts; columns: 2 seeds base | tuned
    base, tuned = images[-1][:, : 2 * r], images[-1][:, 2 * r :]
    assert np.array_equal(images[0][:, : 2 * r], base)  # the base half is the same every time
    assert np.abs(base.astype(int) - tuned.astype(int)).mean() > 0.5  # the tuned half has moved
    assert not np.array_equal(base[:r, :r], base[:r, r:])  # seeds differ
    (events,) = (root / "grid").rglob("events.out.tfevents.*")
    board = EventAccumulator(str(events), size_guidance={"images": 0})
    board.Reload()
    assert [e.step for e in board.Images("val/base_vs_tuned")] == [1, 2]


@pytest.mark.parametrize(("name", "reference"), [("sdxl", "lora"), ("sd3", "lora"), ("sd3", "copy")])
def test_validation_grid_samples_every_family(name, reference, tmp_path):
    from mmpref.vision.diffusion.families import load_family
    from mmpref.vision.diffusion.system import DiffusionDPOSystem
    from mmpref.vision.diffusion.validation import ValidationGrid

    TINY_BUILDERS[name]().save_pretrained(tmp_path / name)
    family = load_family(tmp_path / name)
    grid = ValidationGrid(family, ["a cat", "a dog"], [3], 1, tmp_path / "v", steps=2, guidance=3.0)
    family.release_encoders(keep_vae=True)  # what training does: the grid needs only its encoded prompts + the VAE
    system = DiffusionDPOSystem(family.denoiser, family.train_scheduler, reference=reference, family=family)
    with system.reference_mode() as ref:
        base = grid.sample(ref)
    assert base.shape == (2, 3, family.resolution, family.resolution) and 0 <= base.min() <= base.max() <= 1
    assert torch.equal(base, grid.sample(system.unet))  # LoRA starts at B = 0, a copy is equal: tuned = base
    with torch.no_grad():  # move the policy: the tuned samples follow it, the base ones do not
        for param in system.unet.parameters():
            if param.requires_grad:
                param.add_(0.1)
    assert not torch.equal(base, grid.sample(system.unet))
    with system.reference_mode() as ref:
        assert torch.equal(base, grid.sample(ref))
    assert grid.grid(base, base).shape == (family.resolution * 2, family.resolution * 2, 3)


class Interrupt(Exception):
    """Raised to stop a run mid-epoch, as a crash or a pre-empted job would."""


def test_mid_epoch_resume_gives_the_uninterrupted_weights(inputs, monkeypatch):
    from lightning.pytorch import Callback

    class StopAt(Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 4:
                raise Interrupt

    root, _ = inputs
    # 7 pairs, batch 3: 3 batches an epoch, so 2 optimizer steps with accumulation 2 (the second on one batch);
    # step 3 ends in the middle of epoch 1, one batch before its end
    common = dict(steps=6, batch_size=3, accumulate_grad_batches=2, lr_scheduler="cosine", warmup_steps=2)
    _, whole, _ = train(settings(root, "whole", **common))
    cfg = settings(root, "cut", checkpoint_every_n_steps=1, **common)
    with pytest.raises(Interrupt):
        train(cfg, callbacks=[StopAt()])
    (ckpt,) = (root / "cut" / "checkpoints").glob("*step=3.ckpt")
    assert resume_point(3, 3, 2) == (1, 2)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    _, resumed, report = train(settings(root, "cut", resume=str(ckpt), **common))
    assert report["steps"] == 6
    exact = max_gap(whole.trainable_state(), resumed.trainable_state())
    # a checkpoint at an epoch's end (step 2) resumes exactly too
    (end,) = (root / "cut" / "checkpoints").glob("*step=2.ckpt")
    _, resumed_at_end, _ = train(settings(root, "cut", resume=str(end), **common))
    assert max_gap(whole.trainable_state(), resumed_at_end.trainable_state()) < 1e-6
    # the yardstick: the same resume restarting the epoch from its first batch (what an unaware loader does)
    monkeypatch.setattr(latent_cache, "resume_point", lambda step, batches, acc: (step // -(-batches // acc), 0))
    _, restarted, _ = train(settings(root, "cut", resume=str(ckpt), **common))
    inexact = max_gap(whole.trainable_state(), restarted.trainable_state())
    assert exact < 1e-6 and inexact > 1e-4, (exact, inexact)


@pytest.mark.slow
def test_mmpref_dpo_with_strategy_ddp_writes_once_the_one_process_weights(inputs, tmp_path):
    """``--strategy ddp`` re-runs the command per rank (Lightning's subprocess launcher); only rank 0 writes."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    root, _ = inputs
    command = [str(Path(sys.executable).parent / "mmpref"), "dpo", "--pipeline", str(root / "sd"), "--pairs"]
    command += [str(root / "pairs.parquet"), "--ties", "error", "--cache_dir", str(root / "cache")]
    command += ["--shard_size", "3", "--steps", "3", "--lr", "1e-3", "--accelerator", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    runs = {"one": ["--batch_size", "4"], "ddp": ["--batch_size", "2", "--devices", "2", "--strategy", "ddp"]}
    weights = {}
    for name, extra in runs.items():
        out = tmp_path / name
        done = subprocess.run([*command, *extra, "--out", str(out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("wrote") == 1  # rank 1 trained too but wrote nothing
        weights[name] = load_file(out / "pytorch_lora_weights.safetensors")
    assert max_gap(weights["one"], weights["ddp"]) < 1e-4
