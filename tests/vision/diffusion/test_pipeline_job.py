"""``mmpref dpo --pipeline`` / ``dpo-cache``: recipes per family, the Lightning knobs, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmpref.cli import main
from mmpref.vision.diffusion.tiny import TINY_BUILDERS, tiny_pickapic_parquet

RECIPES = sorted((Path(__file__).resolve().parents[3] / "recipes" / "diffusion" / "pipelines").glob("*.yaml"))
RECIPE_FAMILY = {"sd15": "sd", "sd21_v": "sd", "sdxl": "sdxl", "sd3": "sd3"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    for name, build in TINY_BUILDERS.items():
        build().save_pretrained(root / name)
    tiny_pickapic_parquet(root / "pairs.parquet", n=8)
    return root


def test_every_family_recipe_runs_a_step_with_its_knobs(inputs, tmp_path, capsys):
    assert {r.stem for r in RECIPES} == set(RECIPE_FAMILY)
    for recipe in RECIPES:
        family = RECIPE_FAMILY[recipe.stem]
        out = tmp_path / recipe.stem
        args = ["dpo", "--config", str(recipe), "--pipeline", str(inputs / family), "--pairs"]
        args += [str(inputs / "pairs.parquet"), "--ties", "drop", "--out", str(out), "--cache_dir", str(tmp_path)]
        # the recipe's precision (bf16-mixed), checkpointing, schedule and logger stay; only size and device shrink
        args += ["--steps", "2", "--accumulate_grad_batches", "2", "--batch_size", "2", "--accelerator", "cpu"]
        args += ["--log_dir", str(tmp_path / f"{recipe.stem}-logs"), "--checkpoint_every_n_steps", "0"]
        args += ["--validation_every_n_steps", "2", "--validation_steps", "1"]  # the recipe's prompts and seeds
        assert main(args) == 0, recipe
        report = json.loads(Path(f"{out}.report.json").read_text())
        assert report["family"] == family and report["steps"] == 2
        assert report["config"]["precision"] == "bf16-mixed" and report["config"]["gradient_checkpointing"]
        assert (out / "pytorch_lora_weights.safetensors").is_file()
        assert list((tmp_path / f"{recipe.stem}-logs").rglob("events.out.tfevents.*"))  # the recipe's TensorBoard
        assert (tmp_path / f"{recipe.stem}-logs" / "validation" / "step-0000002.png").is_file()
    assert "wrote" in capsys.readouterr().out


def test_checkpoint_then_resume_continues_the_step_count(inputs, tmp_path):
    base = ["dpo", "--pipeline", str(inputs / "sd"), "--pairs", str(inputs / "pairs.parquet"), "--ties", "drop"]
    base += ["--cache_dir", str(tmp_path), "--accelerator", "cpu", "--log_dir", str(tmp_path / "logs")]
    base += ["--batch_size", "2", "--log_every_n_steps", "1"]
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "2", "--checkpoint_every_n_steps", "1"]) == 0
    last = tmp_path / "logs" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert main([*base, "--out", str(tmp_path / "b"), "--steps", "3", "--resume", str(last)]) == 0
    assert json.loads((tmp_path / "b.report.json").read_text())["steps"] == 3
    metrics = list((tmp_path / "logs").rglob("metrics.csv"))
    assert metrics and "train/accuracy" in metrics[0].read_text().splitlines()[0]


def test_dpo_cache_job_then_bad_inputs_exit_2(inputs, tmp_path, capsys):
    args = ["--pipeline", str(inputs / "sd3"), "--pairs", str(inputs / "pairs.parquet"), "--ties", "drop"]
    args += ["--cache_dir", str(tmp_path)]
    assert main(["dpo-cache", *args]) == 0
    assert main(["dpo-cache", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "8 pairs, 8 encoded" in lines[0] and "0 encoded, 8 already cached" in lines[1]
    assert main(["dpo-cache", *args, "--resize", "refuse"]) == 2
    assert "field 'pairs'" in capsys.readouterr().err
    assert main(["dpo-cache", *args[:1], str(tmp_path), *args[2:]]) == 2
    assert "field 'pipeline'" in capsys.readouterr().err and not list(tmp_path.glob("*.report.json"))
    assert main(["dpo-cache", *args, "--loss", "plackett_luce"]) == 2
    assert "is listwise; pipeline data are pairs" in capsys.readouterr().err


def test_warmup_schedule_reaches_the_optimizer(inputs):
    from mmpref.vision.diffusion.families import load_family
    from mmpref.vision.diffusion.system import DiffusionDPOSystem

    family = load_family(inputs / "sd")
    system = DiffusionDPOSystem(
        family.denoiser, family.train_scheduler, lr=1e-3, reference="lora", family=family,
        lr_scheduler="linear", warmup_steps=2, total_steps=6,
    )  # fmt: skip
    config = system.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_kto_runs_on_a_pipeline_with_pairs_read_as_likes_and_dislikes(inputs, tmp_path):
    args = ["dpo", "--pipeline", str(inputs / "sdxl"), "--pairs", str(inputs / "pairs.parquet"), "--ties", "drop"]
    args += ["--loss", "kto", "--steps", "2", "--lr", "1e-2", "--cache_dir", str(tmp_path), "--accelerator", "cpu"]
    assert main([*args, "--out", str(tmp_path / "kto")]) == 0
    report = json.loads((tmp_path / "kto.report.json").read_text())
    assert report["steps"] == 2 and 0 <= report["metrics"]["train/accuracy"] <= 1
    assert (tmp_path / "kto" / "pytorch_lora_weights.safetensors").is_file()
