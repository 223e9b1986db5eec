from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmpref.cli import main
from mmpref.vision.media import save_video
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, save_taste_model


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = PersonalTasteModel(1280, num_users=4, rank=3, hidden=16)
    return save_taste_model(
        model.eval(), CodePrior(np.zeros(3), np.eye(3) * 0.2), "efficientnet-lite0-imagenet", tmp_path / "model"
    )


@pytest.fixture
def media(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "grey": (128, 128, 128), "warm": (240, 180, 60)}
    for name, colour in colours.items():
        Image.new("RGB", (64, 64), colour).save(folder / f"{name}.png")
    save_video([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(4)], folder / "clip.gif")
    return folder


def test_enroll_then_score_writes_table_json_and_sheet(model_dir, media, tmp_path, capsys):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"type": "pair", "id": "1", "a": str(media / "red.png"), "b": str(media / "blue.png"), "label": 1},
                {"type": "pair", "id": "2", "a": str(media / "warm.png"), "b": str(media / "grey.png"), "label": 1},
                {"type": "rating", "id": "3", "item": str(media / "grey.png"), "rating": 2},
                {"type": "rating", "id": "4", "item": str(media / "red.png"), "rating": 5},
            ]
        )
    )
    assert main(["enroll", str(labels), "--model", str(model_dir), "--user", "ann"]) == 0
    assert "enrolled 'ann' from 3 comparisons" in capsys.readouterr().out
    out_csv, out_json, sheet = tmp_path / "s.csv", tmp_path / "s.json", tmp_path / "sheet.png"
    assert (
        main(
            [
                "score",
                str(media),
                "--model",
                str(model_dir),
                "--user",
                "ann",
                "--csv",
                str(out_csv),
                "--json",
                str(out_json),
                "--sheet",
                str(sheet),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "rank" in table and "clip.gif" in table
    rows = list(csv.DictReader(out_csv.open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert len(json.loads(out_json.read_text())) == 5
    assert sheet.read_bytes()[:4] == b"\x89PNG"
    # warm start: a second scoring of the same folder is served from the cache
    assert main(["score", str(media), "--model", str(model_dir)]) == 0


@pytest.mark.parametrize("case", ["unknown_user", "unreadable_file", "empty_folder", "missing_model", "bad_labels"])
def test_bad_input_exits_nonzero_with_a_clear_message(case, model_dir, media, tmp_path, capsys):
    if case == "unknown_user":
        code = main(["score", str(media), "--model", str(model_dir), "--user", "nobody"])
        message = "unknown user 'nobody'"
    elif case == "unreadable_file":
        (media / "broken.png").write_bytes(b"not a png")
        code = main(["score", str(media), "--model", str(model_dir)])
        message = "broken.png: not a readable image"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        code = main(["score", str(tmp_path / "empty"), "--model", str(model_dir)])
        message = "folder holds no images or videos"
    elif case == "missing_model":
        code = main(["score", str(media), "--model", str(tmp_path / "nope")])
        message = "not a personal taste model folder"
    else:
        (tmp_path / "labels.jsonl").write_text('{"type": "pair", "id": "1", "a": "x.png", "b": "y.png", "label": 3}')
        code = main(["enroll", str(tmp_path / "labels.jsonl"), "--model", str(model_dir), "--user", "ann"])
        message = "problem"
    assert code != 0
    assert message in capsys.readouterr().err
