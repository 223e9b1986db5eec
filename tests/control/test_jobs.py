"""The ``mmpref regret``, ``cpl`` and ``pearl`` jobs end to end on tiny settings, and their bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmpref.cli import main
from mmpref.control.cpl.job import CPLJobConfig
from mmpref.control.pearl.config import PearlConfig
from mmpref.control.policies import load_policy
from mmpref.control.regret.job import RegretConfig
from mmpref.control.robomimic_io import read_env_name, read_preference_pairs, write_robomimic
from mmpref.control.segments import Episode
from mmpref.recipe import job_parser, parse_job

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "control"
JOB_RECIPES = {
    "regret": (RECIPES / "regret" / "gridworld.yaml", RegretConfig),
    "cpl": (RECIPES / "cpl" / "button_press.yaml", CPLJobConfig),
    "pearl": (RECIPES / "pearl" / "window_open_to_close.yaml", PearlConfig),
}
# a tiny PEARL problem: 7 trajectories of 40 steps per task, 10-step segments, 12 segments per side
TINY_PEARL = [
    *("--per_behaviour", "1", "--steps", "40", "--length", "10"),
    *("--segments", "12", "--restarts", "1", "--write_pairs", "40"),
]
TINY_CPL = ["--warmup_steps", "5", "--steps", "5", "--hidden", "32", "--batch_size", "8"]


@pytest.fixture(scope="module")
def pearl_run(tmp_path_factory):
    """One tiny generated transfer window-open -> window-close (its rollouts cached for the other tests)."""
    root = tmp_path_factory.mktemp("pearl")
    recipe = str(JOB_RECIPES["pearl"][0])
    argv = ["pearl", "--config", recipe, *TINY_PEARL, "--cache", str(root / "cache"), "--out", str(root / "run")]
    assert main(argv) == 0
    return root


def _no_pairs_file(path: Path) -> Path:
    obs = np.zeros((5, 39), np.float32)
    episode = Episode(obs, np.zeros((5, 4), np.float32), np.zeros(5, np.float32), obs, np.zeros(5, np.float32))
    return write_robomimic(path, [episode], "button-press-v3")


@pytest.mark.parametrize("job", sorted(JOB_RECIPES))
def test_recipes_load_into_their_configs(job):
    recipe, schema = JOB_RECIPES[job]
    config, _ = parse_job(job_parser(schema, f"mmpref {job}"), schema, ["--config", str(recipe)])
    assert isinstance(config, schema)
    assert recipe.read_text().startswith("# ")  # the header: paper, what it runs, the measured figure
    assert "docs/benchmarks" in recipe.read_text()


def test_regret_job_writes_a_table_with_both_models(tmp_path, capsys):
    recipe = str(JOB_RECIPES["regret"][0])
    tiny = ["--instances", "2", "--sizes", "[8, 16]", "--steps", "25", "--height", "4", "--width", "4"]
    assert main(["regret", "--config", recipe, *tiny, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["cells"]) == {"regret", "partial_return"}
    for by_size in results["cells"].values():
        assert set(by_size) == {"8", "16"}
        for row in by_size.values():
            for model in ("regret", "partial_return"):
                lo, hi = row[model]["near_optimal_ci95"]
                assert 0 <= lo <= row[model]["near_optimal"] <= hi <= 1
                assert row[model]["mean_quality"] <= 1 + 1e-9
            assert -1 <= row["difference_near_optimal"] <= 1
    table = (tmp_path / "results.md").read_text()
    assert "regret model: near-optimal" in table and "partial-return model: near-optimal" in table
    assert table.count("\n| regret |") == 2 and table.count("\n| partial_return |") == 2
    assert (tmp_path / "near_optimal.png").read_bytes()[:4] == b"\x89PNG"
    assert "partial-return model: mean q" in capsys.readouterr().out


def test_pearl_job_writes_transferred_labels(pearl_run):
    run = pearl_run / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["source"]["task"] == "window-open-v3" and summary["target"]["task"] == "window-close-v3"
    assert summary["source"]["segments"] == summary["target"]["segments"] == 12
    assert 0 <= summary["transfer"]["accuracy"] <= 1
    assert 0 <= summary["transfer"]["shared_feature_baseline_accuracy"] <= 1
    with np.load(run / "labels.npz") as saved:
        labels = saved["labels"]
        assert labels.shape == (12, 12) and saved["returns"].shape == (12,)
    assert ((labels >= 0) & (labels <= 1)).all()
    np.testing.assert_allclose(labels + labels.T, 1.0, atol=1e-6)  # ŷ_jl + ŷ_lj = 1 for complete source labels
    pairs = read_preference_pairs(run / "target.hdf5")
    assert len(pairs) == summary["written_pairs"] == 40
    assert {p.teacher for p in pairs} == {"pearl-transfer"} and all(0 <= p.label <= 1 for p in pairs)
    assert read_env_name(run / "target.hdf5") == "window-close-v3"


def test_cpl_job_trains_on_pearl_labels_and_evaluates(pearl_run, tmp_path, capsys):
    dataset = pearl_run / "run" / "target.hdf5"
    tiny = [*TINY_CPL, "--eval_episodes", "1", "--horizon", "30", "--eval_goals", "3"]
    argv = ["cpl", "--dataset", str(dataset), *tiny, "--out", str(tmp_path)]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "window-close-v3"  # taken from the file
    assert summary["data"]["pairs"] == 40 and summary["data"]["segment_length"] == 10
    assert 0 <= summary["training"]["pair_accuracy"] <= 1
    for key in ("success", "success_warmup"):
        assert 0 <= summary[key]["stochastic"] <= 1 and summary[key]["deterministic"] in (0.0, 1.0)
        # and over 3 distinct goals: a rate in thirds, and a return of 30-step episodes
        assert summary[key]["goals"] == 3 and summary[key]["goals_deterministic"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert 0 <= summary[key]["goals_return"] <= 30 * 10
    policy = load_policy(tmp_path / "policy.safetensors")
    assert policy.act(np.zeros(39, np.float32), True).shape == (4,)
    out = capsys.readouterr().out
    assert "success on window-close-v3" in out and "mean action over 3 distinct goals" in out


def test_cpl_job_builds_the_benchmark_dataset(tmp_path):
    tiny = [*("--task", "reach-v3", "--episodes", "3", "--horizon", "20", "--length", "10", "--pairs", "12")]
    tiny += ["--value_horizon", "5", "--eval_episodes", "0"]
    assert main(["cpl", *tiny, *TINY_CPL, "--out", str(tmp_path)]) == 0
    pairs = read_preference_pairs(tmp_path / "dataset.hdf5")
    assert len(pairs) == 12 and pairs[0].teacher == "regret"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["data"]["success_by_source"]) == {"good", "biased", "random"} and "success" not in summary
    assert (tmp_path / "policy.safetensors").is_file()


def test_pearl_job_transfers_from_a_labelled_file(pearl_run, tmp_path):
    source = pearl_run / "run" / "target.hdf5"  # window-close-v3 with 40 transferred pairs: a labelled source
    tiny = [*TINY_PEARL, "--cache", str(pearl_run / "cache"), "--source_data", str(source)]
    tiny += ["--target", "window-open-v3"]
    assert main(["pearl", *tiny, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["source"]["task"] == "window-close-v3" and summary["source"]["labelled_pairs"] <= 40
    assert summary["transfer"]["accuracy"] is not None and 0 <= summary["transfer"]["accuracy"] <= 1
    assert (tmp_path / "labels.npz").is_file()


# --- bad input: one message naming the file or field and the fix, exit code 2 ---------------------------------


@pytest.mark.parametrize("job", sorted(JOB_RECIPES))
def test_unknown_recipe_field_names_the_file_and_the_valid_fields(job, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("seed: 1\ncolour: red\n")
    assert main([job, "--config", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"mmpref {job}: recipe {recipe}: unknown field 'colour'" in err and "Valid fields" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_override_typos_and_bad_types_are_named(tmp_path, capsys):
    assert main(["regret", "--instancez", "3", "--out", str(tmp_path)]) == 2
    assert "unknown option --instancez (did you mean --instances?)" in capsys.readouterr().err
    assert main(["regret", "--steps", "many", "--out", str(tmp_path)]) == 2
    assert "--steps: field 'steps' expects an integer, got 'many'" in capsys.readouterr().err
    assert main(["pearl", "--target", "window-close-v3", "--out", str(tmp_path)]) == 2
    assert "set source=<Meta-World task>" in capsys.readouterr().err


def test_cpl_rejects_a_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.hdf5"
    assert main(["cpl", "--dataset", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "field 'dataset'" in err and str(missing) in err and "file not found" in err


def test_cpl_rejects_a_file_without_preference_labels(tmp_path, capsys):
    path = _no_pairs_file(tmp_path / "demos.hdf5")
    assert main(["cpl", "--dataset", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "no 'preferences' group" in err and "pairs=" in err


def test_pearl_rejects_missing_and_unlabelled_source_files(tmp_path, capsys):
    missing = tmp_path / "nope.hdf5"
    assert main(["pearl", "--source_data", str(missing), "--target", "reach-v3", "--out", str(tmp_path)]) == 2
    assert "field 'source_data'" in capsys.readouterr().err
    path = _no_pairs_file(tmp_path / "demos.hdf5")
    assert main(["pearl", "--source_data", str(path), "--target", "reach-v3", "--out", str(tmp_path)]) == 2
    assert "no 'preferences' group" in capsys.readouterr().err


def test_unknown_task_names_suggest_the_closest(pearl_run, tmp_path, capsys):
    assert main(["cpl", "--task", "button-pres-v3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "field 'task'" in err and "did you mean button-press-v3" in err
    assert main(["pearl", "--source", "window-open-v3", "--target", "window-clos-v3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "field 'target'" in err and "window-close-v3" in err
    dataset = pearl_run / "run" / "target.hdf5"
    assert main(["cpl", "--dataset", str(dataset), "--task", "reach-v3", "--out", str(tmp_path)]) == 2
    assert "recorded on 'window-close-v3', not 'reach-v3'" in capsys.readouterr().err
