from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from mmpref.cli import main
from mmpref.control.peeling import evaluation as peeling_evaluation
from mmpref.control.peeling import pipeline as peeling_pipeline
from mmpref.control.peeling.config import PeelingConfig
from mmpref.control.peeling.dpo import FinetuneConfig
from mmpref.control.peeling.evaluation import evaluate_policy
from mmpref.control.policies import GaussianPolicy, load_policy
from mmpref.control.segments import rollout
from mmpref.recipe import job_parser, parse_job

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes", "control", "peeling").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_peeling_recipes_parse(recipe):
    config, _ = parse_job(job_parser(PeelingConfig, "mmpref peeling"), PeelingConfig, ["--config", str(recipe)])
    assert config == PeelingConfig(**yaml.safe_load(recipe.read_text()))  # jsonargparse reads what YAML says
    assert config.finetune().nll_weight == config.nll_weight


def test_finetune_carries_every_stage_two_field():
    """Every field PeelingConfig shares with FinetuneConfig reaches stage 2 (set away from both defaults)."""
    config = PeelingConfig(
        replay_rounds=2,
        windows=3,
        lr=3e-4,
        lr_decay=0.8,
        round_average=0.5,
        epochs=2,
        seed=7,
        validation=2,
        select_best=True,
    )
    finetune = config.finetune()
    shared = {f.name for f in fields(FinetuneConfig)} & {f.name for f in fields(PeelingConfig)}
    assert {"replay_rounds", "windows", "lr", "lr_decay", "round_average", "seed", "select_best"} <= shared
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
    assert main(["peeling", "--demoz", "50", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "demoz" in err and "demos" in err


@pytest.mark.slow
def test_job_runs_end_to_end_on_a_tiny_setting(tmp_path):
    settings = "--demos 3 --max_steps 20 --bc_epochs 1 --pool 2 --rated 8 --iterations 1 --groups 1 --group_size 2"
    settings += " --eval_episodes 1 --refit_rated 2 --noise_correlation 0.5 --censored true --validation 1"
    settings += " --select_best true --track_rounds true"
    assert main(["peeling", *settings.split(), "--out", str(tmp_path)]) == 0
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


class _RepeatingGoals(gym.Env):
    """Resets cycle through start states 0, 1, 0, 2, 1, 3 (object x = the index); state k succeeds iff k is odd."""

    order = [0, 1, 0, 2, 1, 3]

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (39,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        self.resets, self.state = 0, 0

    def reset(self, *, seed=None, options=None):
        self.state = self.order[self.resets % len(self.order)]
        self.resets += 1
        obs = np.zeros(39, np.float32)
        obs[4] = self.state
        return obs, {}

    def step(self, action):
        obs = np.zeros(39, np.float32)
        obs[4] = self.state
        return obs, 0.0, False, True, {"success": float(self.state % 2)}


def test_evaluation_counts_each_goal_once(monkeypatch):
    """Meta-World draws goals from 50 with replacement; a goal drawn again is skipped, so 4 goals here are the start
    states 0, 1, 2, 3 (success 0, 1, 0, 1) from 6 draws, not 0, 1, 0, 2; 5 distinct goals do not exist."""
    monkeypatch.setattr(peeling_evaluation, "make_env", lambda *args, **kwargs: _RepeatingGoals())
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=8)
    result = evaluate_policy(policy, "push-v3", seed=0, episodes=4, max_steps=3, deterministic=True)
    assert result["goal_success"] == [0, 1, 0, 1] and result["draws"] == 6 and result["success"] == 0.5
    with pytest.raises(ValueError, match="distinct goals"):
        evaluate_policy(policy, "push-v3", seed=0, episodes=5, max_steps=3, deterministic=True)
    with pytest.raises(ValueError, match="eval_episodes"):
        PeelingConfig(eval_episodes=51)


def test_best_restart_keeps_the_highest_score_and_the_earliest_of_ties():
    assert peeling_pipeline.best_restart([1.0, 3.0, 3.0, 2.0]) == 1
    assert peeling_pipeline.best_restart([0.5]) == 0
    with pytest.raises(ValueError, match="at least one"):
        peeling_pipeline.best_restart([])
    assert peeling_pipeline.restart_seed(7, 0) == 7  # restart 0 explores as a plain run
    assert peeling_pipeline.restart_seed(7, 2) == 7 + 2 * peeling_pipeline.RESTART_STRIDE


def test_restart_errors_name_the_field():
    with pytest.raises(ValueError, match="restarts"):
        PeelingConfig(restarts=0)
    with pytest.raises(ValueError, match="first_restart"):
        PeelingConfig(first_restart=-1)
    with pytest.raises(ValueError, match="validation"):
        PeelingConfig(restarts=2)
    with pytest.raises(ValueError, match="refit_rated=0"):
        PeelingConfig(restarts=2, validation=2, refit_rated=4)
    with pytest.raises(ValueError, match="restart_validation"):
        PeelingConfig(restart_validation=-1)


def _tiny_stage_two(**changes):
    """Stage 2 on push-v3 at toy size from one fixed random policy, ranked by the true return (no reward model)."""
    import torch

    config = PeelingConfig(
        max_steps=20,
        pool=2,
        iterations=2,
        groups=1,
        group_size=2,
        validation=2,
        select_best=True,
        eval_episodes=2,
        oracle=True,
        **changes,
    )
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=8, squash="clip")
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    results, finetuned = peeling_pipeline.stage_two(config, policy, None, peeling_evaluation.training_pool(config))
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())  # BC itself is never trained
    return results, finetuned


def test_restarts_keep_the_run_the_validation_goals_score_best():
    """Three restarts in one run are the three single runs of restarts 0, 1, 2 (each its own exploration), and the
    one kept is the single run whose kept round scored best on the validation goals, held-out results and all."""
    together, policy = _tiny_stage_two(restarts=3)
    alone = [_tiny_stage_two(first_restart=r)[0] for r in range(3)]
    assert "restarts" not in alone[0]  # restart 0 alone is a plain run, which reports no restarts
    scores = [a["finetune_log"]["validation"][a["finetune_log"]["kept_round"]] for a in alone]
    assert [a["restarts"][0]["restart"] for a in alone[1:]] == [1, 2]  # a run of later restarts names them
    assert [s["validation"] for s in together["restarts"]] == scores
    assert [s["seed"] for s in together["restarts"]] == [peeling_pipeline.restart_seed(0, r) for r in range(3)]
    # the restarts explored differently: their rollouts earned different returns in the first round
    assert len({a["finetune_log"]["reward"][0] for a in alone}) == 3
    kept = peeling_pipeline.best_restart(scores)
    assert kept > 0 and together["restart_kept"] == kept  # (here a later restart beat the plain run)
    assert together["finetune_log"] == alone[kept]["finetune_log"]
    assert together["ft_mean"] == alone[kept]["ft_mean"]
    # every restart's held-out record (diagnosis) is what its single run's evaluation gave
    for summary, single in zip(together["restarts"], alone, strict=True):
        assert summary["held_out_mean"]["goal_success"] == single["ft_mean"]["goal_success"]
    assert together["reference_unchanged"]


def test_restarts_chosen_on_more_validation_goals():
    """``restart_validation`` scores each restart's kept policy on that many validation goals and keeps the best.

    On the round's own goals the score is the kept round's (the restart holds that round's weights); on more goals it
    is the mean true return (the oracle's ranking) of one mean-action rollout per goal, computed here by hand.
    """
    same, _ = _tiny_stage_two(restarts=3, restart_validation=2)
    assert [s["choice"] for s in same["restarts"]] == [s["validation"] for s in same["restarts"]]
    more, policy = _tiny_stage_two(restarts=3, restart_validation=5)
    choices = [s["choice"] for s in more["restarts"]]
    assert [s["validation"] for s in more["restarts"]] == [s["validation"] for s in same["restarts"]]
    assert choices != [s["validation"] for s in more["restarts"]]
    assert more["restart_kept"] == peeling_pipeline.best_restart(choices)
    config = PeelingConfig(max_steps=20, validation=2)
    act = policy.numpy_policy(deterministic=True)
    returns = [
        float(np.sum(rollout(env, act, max_steps=20).rewards)) for env in peeling_evaluation.validation_pool(config, 5)
    ]
    assert np.isclose(choices[more["restart_kept"]], np.mean(returns))
    # a run of one restart records its choice score too, so restarts split across runs combine the same way
    alone, _ = _tiny_stage_two(first_restart=more["restart_kept"], restart_validation=5)
    assert alone["restarts"][0]["choice"] == choices[more["restart_kept"]]
    assert alone["ft_mean"] == more["ft_mean"]


def test_restarts_are_kept_by_the_choice_score_not_the_rounds(monkeypatch):
    """Where the choice scores order the restarts unlike their kept rounds' scores, the choice scores decide."""
    scores = iter([1.0, 2.0])
    monkeypatch.setattr(peeling_pipeline, "restart_choice_score", lambda *args: next(scores))
    results, _ = _tiny_stage_two(restarts=2, restart_validation=5)
    validation = [s["validation"] for s in results["restarts"]]
    assert peeling_pipeline.best_restart(validation) == 0  # the kept rounds' scores keep restart 0 (here a tie)
    assert [s["choice"] for s in results["restarts"]] == [1.0, 2.0]
    assert results["restart_kept"] == 1
