from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpref.cli import main

RECIPE_ROOT = Path(__file__).resolve().parents[2].joinpath("recipes")
# LightningCLI recipes only: control and diffusion recipes feed their own jobs (pbrl, peeling, dpo --config)
RECIPES = sorted(p for p in RECIPE_ROOT.rglob("*.yaml") if not {"control", "diffusion"} & set(p.parts))


def test_help_lists_the_jobs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    jobs = ("fit", "validate", "test", "predict", "demo", "score", "enroll", "label", "pbrl", "peeling")
    for job in (*jobs, "regret", "cpl", "pearl"):
        assert f"  {job}" in out


def test_unknown_job_fails_with_usage(capsys):
    assert main(["trian"]) == 2
    assert "unknown job 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_runs_fast_dev_run(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "fit",
                "--config",
                str(recipe),
                "--trainer.fast_dev_run",
                "true",
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
        == 0
    )


def test_fit_rejects_a_bad_loss_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(RECIPES[0]), "--model.init_args.loss", "bt", "--trainer.fast_dev_run", "true"])
    assert "bt" in capsys.readouterr().err


def test_demo_writes_metrics_and_plot(tmp_path, monkeypatch):
    # a relative output folder, as in the README's `mmpref demo` (default runs/demo): the labels manifest it writes
    # must resolve its image paths against its own folder
    monkeypatch.chdir(tmp_path.parent)
    # the diffusion and control parts have their own tests (tests/vision/diffusion, tests/control), on tiny settings
    for job in ("reward", "taste"):
        assert main(["demo", "--job", job, "--out", tmp_path.name, "--epochs", "2"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["loss"] for r in metrics["results"]] == ["bradley_terry", "plackett_luce", "ranklist"]
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "noise ceiling" in (tmp_path / "metrics.md").read_text()
    taste = json.loads((tmp_path / "taste" / "metrics.json").read_text())
    assert taste["heldout_users"] == 20 and len(taste["curve"]) == 8
    for name in (
        "learning_curve.png",
        "person-0-contact-sheet.png",
        "person-0-scores.csv",
        "model/model.safetensors",
        "model/users/person-0.json",
    ):
        assert (tmp_path / "taste" / name).is_file(), name
