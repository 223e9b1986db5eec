from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from mmpref.recipe import RecipeError, blame, load_recipe


@dataclass
class Settings:
    name: str
    lr: float = 1.0e-3
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_recipe_file_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# header\nname: x\nlr: 1e-4\nsteps: 5\n")
    config = load_recipe(Settings, recipe, ["steps=7", "sizes=[3, 4]", "limit=null", "mode=b"])
    assert config == Settings(name="x", lr=1e-4, steps=7, mode="b", sizes=(3, 4), limit=None)
    assert isinstance(config.lr, float)  # PyYAML reads 1e-4 as a string; the float field parses it
    assert load_recipe(Settings, None, ["name=y", "steps=1e3"]).steps == 1000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["name=x", "stepz=3"], "--set stepz: unknown field 'stepz' (did you mean steps?)"),
        (["steps=3"], "missing required field(s) name"),
        (["name=x", "steps=2.5"], "--set steps: field 'steps' expects an integer, got 2.5"),
        (["name=x", "mode=c"], "field 'mode' expects one of 'a', 'b', got 'c'"),
        (["name=x", "verbose=yes please"], "field 'verbose' expects true or false"),
        (["name=x", "sizes=3"], "field 'sizes' expects a list"),
        (["name=x", "steps=0"], "--set name, --set steps: steps must be >= 1, got 0"),
        (["name"], "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(Settings, None, overrides)
    assert message in str(err.value)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(Settings, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(Settings, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(Settings, tmp_path / "broken.yaml")


def test_blame_names_the_field_of_an_input_error():
    with pytest.raises(RecipeError, match="field 'dataset': no such file"):
        with blame("dataset"):
            raise ValueError("no such file")
    with pytest.raises(KeyError):  # not an input error: passes through unchanged
        with blame("dataset"):
            raise KeyError("bug")
