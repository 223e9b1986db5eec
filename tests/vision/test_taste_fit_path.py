"""`mmpref fit` on a user's own taste files: users counted from the data, images outside the table's folder."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest
import torch

from mmpref.errors import MmprefError
from mmpref.vision.demo_data import make_demo_image
from mmpref.vision.taste.files import TasteFilesDataModule
from mmpref.vision.taste.model import PersonalTasteModel

USERS = ("ann", "bob", "cy")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """``table/pairs.parquet`` whose image paths point into a sibling folder ``images/`` (outside the table's)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "table").mkdir()
    for i in range(6):
        make_demo_image(i)[1].resize((48, 48)).save(tmp_path / "images" / f"{i}.png")
    rows = [
        {"caption": "", "jpg_0": f"../images/{a}.png", "jpg_1": f"../images/{(a + 1) % 6}.png", "label_0": 1.0,
         "user_id": user}
        for user in USERS
        for a in range(6)
    ]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "table" / "pairs.parquet")
    return tmp_path


def _fit(tmp_path: Path, pairs: Path, model_args: str, media_root: Path | None) -> tuple[int, str]:
    from mmpref.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {tmp_path / "runs"}
model:
  class_path: mmpref.vision.taste.system.PersonalTasteSystem
  init_args:
    model:
      class_path: mmpref.vision.taste.model.PersonalTasteModel
      init_args:
        embedding_dim: 1280
        rank: 2
        hidden: 8{model_args}
data:
  class_path: mmpref.vision.taste.files.TasteFilesDataModule
  init_args:
    pairs: {pairs}
    cache_dir: {tmp_path / "cache"}
    batch_size: 8{f"{chr(10)}    media_root: {media_root}" if media_root else ""}
"""
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["fit", "--config", str(recipe)])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return int(code), err.getvalue()


def test_media_root_lets_the_taste_files_live_outside_the_tables_folder(outside):
    pairs = outside / "table" / "pairs.parquet"
    with pytest.raises(MmprefError, match="outside the media root"):
        TasteFilesDataModule(pairs=pairs, cache_dir=outside / "cache").setup()
    data = TasteFilesDataModule(pairs=pairs, cache_dir=outside / "cache", media_root=str(outside / "images"))
    data.setup()
    assert data.user_ids == list(USERS) and data.num_users == 3 and data.embeddings.shape == (6, 1280)


def test_fit_counts_the_users_from_the_data(outside):
    code, err = _fit(outside, outside / "table" / "pairs.parquet", "", media_root=outside / "images")
    assert code == 0, err
    checkpoint = next((outside / "runs").rglob("*.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert tuple(state["model.user_codes.weight"].shape) == (3, 2)  # three raters in the file, none typed


def test_fit_with_too_few_users_typed_exits_2_naming_the_field(outside):
    code, err = _fit(outside, outside / "table" / "pairs.parquet", "\n        num_users: 2", outside / "images")
    assert code == 2
    assert "num_users" in err and "has 3 users" in err and "Traceback" not in err and "IndexError" not in err


def test_a_given_user_count_is_kept_and_checked():
    model = PersonalTasteModel(4, num_users=5, rank=2, hidden=3)
    model.size_user_table(5)
    model.size_user_table(3)  # more rows than users: allowed (a warning), the table is kept
    assert model.user_codes.num_embeddings == 5
    with pytest.raises(MmprefError, match="'num_users'.* is 5 but the data has 6 users"):
        model.size_user_table(6)
    counted = PersonalTasteModel(4, rank=2, hidden=3)
    counted.size_user_table(7)
    assert counted.user_codes.num_embeddings == 7
