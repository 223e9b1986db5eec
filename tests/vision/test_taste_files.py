"""Training the personal model from real file formats: Pick-a-Pic Parquet with user_id plus a ratings table."""

from __future__ import annotations

import io

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from mmpref.data import DataError
from mmpref.vision.demo_data import make_demo_image
from mmpref.vision.taste.files import TasteFilesDataModule
from mmpref.vision.taste.model import PersonalTasteModel
from mmpref.vision.taste.system import PersonalTasteSystem


def _png(index: int) -> bytes:
    buf = io.BytesIO()
    make_demo_image(index)[1].resize((64, 64)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def files(tmp_path):
    images = {i: _png(i) for i in range(12)}
    rng = np.random.default_rng(0)
    rows = []
    for n in range(60):
        a, b = rng.choice(12, 2, replace=False)
        user = "warm" if n % 2 else "cool"
        # "warm" prefers the lower index, "cool" the higher: two opposite tastes the model must separate
        rows.append(
            {
                "caption": "",
                "jpg_0": images[a],
                "jpg_1": images[b],
                "user_id": user,
                "label_0": float((a < b) == (user == "warm")),
            }
        )
    pd.DataFrame(rows).to_parquet(tmp_path / "pairs.parquet")
    for i in range(4):
        (tmp_path / f"r{i}.png").write_bytes(images[i])
    pd.DataFrame(
        {
            "image": [f"r{i}.png" for i in range(4)] * 2,
            "user": ["warm"] * 4 + ["cool"] * 4,
            "rating": [5, 4, 2, 1, 1, 2, 4, 5],
        }
    ).to_csv(tmp_path / "ratings.csv", index=False)
    return tmp_path


def test_trains_from_parquet_pairs_and_a_ratings_table(files):
    data = TasteFilesDataModule(
        pairs=files / "pairs.parquet",
        ratings=files / "ratings.csv",
        cache_dir=files / "cache",
        list_size=4,
        batch_size=16,
    )
    data.setup()
    assert data.user_ids == ["cool", "warm"]
    # 12 images in the Parquet + 4 rated files whose bytes equal four of them: 16 items, 12 distinct embeddings
    assert data.embeddings.shape[0] == 16 and torch.unique(data.embeddings, dim=0).shape[0] == 12
    assert len(data.rating_lists) == 2 and len(data.train_pairs) + len(data.val_pairs) == 60
    L.seed_everything(0, verbose=False)
    model = PersonalTasteModel(1280, num_users=2, rank=2, hidden=16)
    trainer = L.Trainer(
        max_epochs=40,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(PersonalTasteSystem(model, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)), data)
    model.eval()
    rows = [data.item_keys.index(_png(i)) for i in range(12)]  # embedding row of image i
    with torch.no_grad():
        scores = model(data.embeddings[rows][:, None, :].expand(-1, 2, -1), torch.tensor([0, 1]))  # [image, user]
    low, high = scores[:6].mean(0), scores[6:].mean(0)
    assert high[0] > low[0]  # cool: higher indices better
    assert low[1] > high[1]  # warm: lower indices better
    # a second setup is served from the embedding cache
    again = TasteFilesDataModule(pairs=files / "pairs.parquet", cache_dir=files / "cache")
    again._compute = lambda items: pytest.fail("encoder called despite a warm cache")
    again.setup()


def test_pairs_without_user_ids_are_refused(files):
    frame = pd.read_parquet(files / "pairs.parquet").drop(columns=["user_id"])
    frame.to_parquet(files / "anon.parquet")
    with pytest.raises(DataError, match="no user_id"):
        TasteFilesDataModule(pairs=files / "anon.parquet", cache_dir=files / "cache").setup()
    with pytest.raises(ValueError, match="give pairs"):
        TasteFilesDataModule()
