from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmpref.cli import main
from mmpref.control.envs import ExpertPolicy
from mmpref.control.pbrl.loop import PbRLConfig
from mmpref.control.video import record_policy
from mmpref.recipe import job_parser, parse_job

CONTROL_RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes", "control").glob("*.yaml"))


@pytest.mark.parametrize("recipe", CONTROL_RECIPES, ids=lambda p: p.name)
def test_control_recipes_parse(recipe):
    config, _ = parse_job(job_parser(PbRLConfig, "mmpref pbrl"), PbRLConfig, ["--config", str(recipe)])
    assert config == PbRLConfig(**yaml.safe_load(recipe.read_text()))  # jsonargparse reads what YAML says
    assert config.max_labels <= 2000 and config.task.endswith("-v3")


def test_pbrl_job_runs_resumes_and_writes_its_outputs(tmp_path, capsys):
    tiny = [
        *("--total_steps", "600", "--learning_starts", "200", "--feedback_start", "0", "--feedback_every", "300"),
        *("--reward_updates", "null", "--eval_every", "300", "--eval_episodes", "1", "--queries_per_round", "20"),
        *("--reward_epochs", "2", "--segment_length", "20", "--task", "reach-v3"),
    ]
    out = tmp_path / "run"
    assert (
        main(
            [
                "pbrl",
                "--config",
                str(CONTROL_RECIPES[0]),
                *tiny,
                "--total_steps",
                "300",
                "--out",
                str(out),
                "--no-video",
            ]
        )
        == 0
    )
    checkpoint = {f.name: f.read_bytes() for f in (out / "checkpoint").iterdir()}
    capsys.readouterr()
    assert main(["pbrl", *tiny, "--out", str(out), "--no-video"]) == 2  # a new run would replace the checkpoint
    refused = capsys.readouterr().err
    assert "holds a run already" in refused and f"mmpref pbrl --resume --out {out}" in refused
    assert {f.name: f.read_bytes() for f in (out / "checkpoint").iterdir()} == checkpoint  # nothing was touched
    assert main(["pbrl", "--resume", "--out", str(out), "--no-video"]) == 0  # continues the checkpoint
    summary = json.loads((out / "summary.json").read_text())
    assert summary["history"][-1]["steps"] == 300 and summary["budget"]["asked"] == 20
    assert (out / "success_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "final success rate" in capsys.readouterr().out


def test_bad_settings_fail_clearly(tmp_path, capsys):
    assert main(["pbrl", "--max_labels", "0", "--out", str(tmp_path)]) == 2
    assert "label budget" in capsys.readouterr().err
    assert main(["pbrl", "--task", "button-pres-v3", "--out", str(tmp_path)]) == 2
    assert "did you mean button-press-v3" in capsys.readouterr().err
    assert main(["pbrl", "--colour", "red", "--out", str(tmp_path)]) == 2
    capsys.readouterr()
    for field in ("segment_length", "queries_per_round", "total_steps", "eval_every"):
        assert main(["pbrl", f"--{field}", "0", "--out", str(tmp_path)]) == 2
        assert f"{field} must be >= 1, got 0" in capsys.readouterr().err
    assert main(["pbrl", "--parts", "[surf, rime2]", "--out", str(tmp_path)]) == 2
    assert "each one of 'surf', 'rune', 'rime', 'qpa', 'listwise'" in capsys.readouterr().err


def test_policy_video_is_rendered_offscreen(tmp_path):
    outcome = record_policy(
        ExpertPolicy("reach-v3"), "reach-v3", tmp_path / "reach.mp4", max_steps=40, width=96, height=72
    )
    from mmpref.vision.media import load_video

    frames = load_video(tmp_path / "reach.mp4", max_frames=100)
    assert len(frames) >= 10 and frames[0].size == (96, 72)
    assert np.asarray(frames[-1]).std() > 5  # a rendered scene, not a blank frame
    assert outcome["steps"] <= 40
