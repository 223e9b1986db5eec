from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mmpref.recipe import RecipeError, blame, job_parser, parse_job
from mmpref.reward.trainers import TrainerSettings


@dataclass
class Settings:
    """Settings of a test job.

    Args:
        name: a required field.
        lr: a float.
    """

    name: str
    lr: float = 1.0e-3
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    parts: list[Literal["surf", "rune"]] = field(default_factory=list)
    limit: int | None = None
    verbose: bool = False
    trainer: TrainerSettings = field(default_factory=TrainerSettings)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def _parse(argv):
    parser = job_parser(Settings, "mmpref test")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-video", action="store_true")
    return parse_job(parser, Settings, argv)


def test_recipe_file_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# header\nname: x\nlr: 1e-4\nsteps: 5\ntrainer:\n  accelerator: cpu\n")
    argv = ["--config", str(recipe), "--steps", "7", "--sizes", "[3, 4]", "--limit", "null", "--mode", "b"]
    config, options = _parse([*argv, "--out", "o", "--no-video", "--trainer.precision", "bf16-mixed"])
    assert config == Settings(
        name="x",
        lr=1e-4,
        steps=7,
        mode="b",
        sizes=(3, 4),
        limit=None,
        trainer=TrainerSettings(accelerator="cpu", precision="bf16-mixed"),
    )
    assert isinstance(config.lr, float) and isinstance(config.trainer, TrainerSettings)
    assert options.out == "o" and options.no_video is True
    base = tmp_path / "base.yaml"  # recipes stack: the later file wins
    base.write_text("name: base\nsteps: 3\n")
    assert _parse(["--config", str(base), "--config", str(recipe)])[0].steps == 5
    assert _parse(["--name=y"])[0].trainer.accelerator == "auto"  # the default: the accelerator the user has


def test_print_config_and_help_print_and_return_none(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsteps: 5\n")
    assert _parse(["--config", str(recipe), "--steps", "6", "--print_config"]) is None
    printed = capsys.readouterr().out
    assert "steps: 6" in printed and "accelerator: auto" in printed
    assert _parse(["--help"]) is None
    assert "a required field" in capsys.readouterr().out  # the docstring line of the field


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "x", "--stepz", "3"], "command line: unknown option --stepz (did you mean --steps?)"),
        (
            ["--name", "x", "--trainer.acelerator", "cpu"],
            "unknown option --trainer.acelerator (did you mean --trainer.accelerator?)",
        ),
        (["--steps", "3"], "missing required field(s) name: set them in the recipe or --name ..."),
        (["--name", "x", "--steps", "2.5"], "--steps: field 'steps' expects an integer, got '2.5'"),
        (["--name", "x", "--mode", "c"], "--mode: field 'mode' expects one of 'a', 'b', got 'c'"),
        (["--name", "x", "--verbose", "yes please"], "field 'verbose' expects true or false"),
        (["--name", "x", "--sizes", "3"], "field 'sizes' expects a list, each an integer, e.g. [1, 2]"),
        (
            ["--name", "x", "--parts", "[surf, bogus]"],
            "--parts: field 'parts' expects a list, each one of 'surf', 'rune', e.g. [surf, rune], got 'bogus'",
        ),
        (["--name", "x", "--steps", "0"], "--name, --steps: steps must be >= 1, got 0"),
    ],
)
def test_bad_overrides_name_the_field(argv, message):
    with pytest.raises(RecipeError) as err:
        _parse(argv)
    assert message in str(err.value)


def test_bad_recipe_files_name_the_file_and_the_field(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        _parse(["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        _parse(["--config", str(tmp_path / "list.yaml")])
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        _parse(["--config", str(tmp_path / "broken.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstepz: 3\ntrainer:\n  acelerator: cpu\n")
    with pytest.raises(RecipeError) as err:
        _parse(["--config", str(bad)])
    message = str(err.value)
    assert message.startswith(f"recipe {bad}: unknown field 'stepz' (did you mean steps?)")
    assert "unknown field 'trainer.acelerator' (did you mean trainer.accelerator?)" in message
    assert "Valid fields: limit, lr, mode, name, no_video, out, parts, sizes, steps, trainer, verbose" in message
    (tmp_path / "typed.yaml").write_text("name: x\nsteps: many\n")
    with pytest.raises(RecipeError, match=f"recipe {tmp_path / 'typed.yaml'}: field 'steps' expects an integer"):
        _parse(["--config", str(tmp_path / "typed.yaml")])


def test_blame_names_the_field_of_an_input_error():
    with pytest.raises(RecipeError, match="field 'dataset': no such file"):
        with blame("dataset"):
            raise ValueError("no such file")
    with pytest.raises(KeyError):  # not an input error: passes through unchanged
        with blame("dataset"):
            raise KeyError("bug")
