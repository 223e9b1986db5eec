from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from mmpref.cli import main
from mmpref.control.peeling import FinetuneConfig
from mmpref.control.peeling_pipeline import PeelingConfig
from mmpref.control.policies import load_policy

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes", "control", "peeling").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_peeling_recipes_parse(recipe):
    config = PeelingConfig(**yaml.safe_load(recipe.read_text()))
    assert config.finetune().nll_weight == config.nll_weight


def test_finetune_carries_every_stage_two_field():
    """Every field PeelingConfig shares with FinetuneConfig reaches stage 2 (set away from both defaults)."""
    config = PeelingConfig(replay_rounds=2, windows=3, lr=3e-4, epochs=2, seed=7, validation=2, select_best=True)
    finetune = config.finetune()
    shared = {f.name for f in fields(FinetuneConfig)} & {f.name for f in fields(PeelingConfig)}
    assert {"replay_rounds", "windows", "lr", "seed", "select_best"} <= shared
    for name in shared:
        assert getattr(finetune, name) == getattr(config, name), name


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="noise_low"):
        PeelingConfig(noise_low=0.5, noise_high=0.1)
    with pytest.raises(ValueError, match="demos"):
        PeelingConfig(demos=0)
    with pytest.raises(ValueError, match="pool"):
        PeelingConfig(groups=5, pool=4)
    with pytest.raises(ValueError, match="refit_rated"):
        PeelingConfig(refit_rated=-1)
    with pytest.raises(ValueError, match="refit_rated"):
        PeelingConfig(refit_rated=33, groups=4, group_size=8)  # more than a round's 32 rollouts
    with pytest.raises(ValueError, match="noise_correlation"):
        PeelingConfig(noise_correlation=-0.1)
    with pytest.raises(ValueError, match="log_floor"):
        PeelingConfig(log_floor=-0.02)
    assert PeelingConfig(squash="tanh").censored  # the default stays valid: ignored for a tanh policy
    with pytest.raises(ValueError, match="refit_rated=0"):
        PeelingConfig(oracle=True, refit_rated=4)
    with pytest.raises(ValueError, match="select_on"):
        PeelingConfig(select_on="success")


def test_job_rejects_unknown_recipe_fields(tmp_path, capsys):
    assert main(["peeling", "--set", "demoz=50", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "demoz" in err and "demos" in err


@pytest.mark.slow
def test_job_runs_end_to_end_on_a_tiny_setting(tmp_path):
    settings = "demos=3 max_steps=20 bc_epochs=1 pool=2 rated=8 iterations=1 groups=1 group_size=2 eval_episodes=1"
    settings += " refit_rated=2 noise_correlation=0.5 censored=true validation=1 select_best=true track_rounds=true"
    assert main(["peeling", "--set", *settings.split(), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    log = summary["results"]["finetune_log"]
    assert log["refits"] == 1 and len(log["validation"]) == 2 and log["kept_round"] in (0, 1)
    assert summary["results"]["reference_unchanged"] is True
    # the default explores at half σ, so BC sampled there is evaluated as the baseline finetuning must beat
    assert summary["config"]["explore_temperature"] == 0.5
    assert set(summary["results"]["bc_tempered_sample"]) == {"success", "progress", "jerk", "goal_success"}
    assert len(summary["results"]["ft_mean"]["goal_success"]) == 1  # one 0/1 per evaluation goal
    assert summary["config"]["windows"] == 5
    # the tracked record: BC and each round on the held-out goals, 16 validation goals a round; the kept round's
    # held-out success is the finetuned policy's
    rounds = summary["results"]["rounds"]
    assert len(rounds["held_out"]) == len(rounds["validation"]) == 2
    assert all(len(v["fused"]) == len(v["progress"]) == 16 for v in rounds["validation"])
    assert rounds["held_out"][log["kept_round"]]["goal_success"] == summary["results"]["ft_mean"]["goal_success"]
    for name in ("demos.hdf5", "bc_policy.safetensors", "finetuned_policy.safetensors"):
        assert (tmp_path / name).is_file()
    assert load_policy(tmp_path / "finetuned_policy.safetensors").censored
    assert not load_policy(tmp_path / "bc_policy.safetensors").censored
