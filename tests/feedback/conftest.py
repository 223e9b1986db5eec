from __future__ import annotations

import pytest
from PIL import Image

from mmpref.feedback.store import LabelStore


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    paths = []
    for i, colour in enumerate([(220, 40, 40), (40, 40, 220), (40, 200, 40), (230, 200, 40)]):
        path = folder / f"item{i}.png"
        Image.new("RGB", (48, 48), colour).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def store(tmp_path, images):
    s = LabelStore(tmp_path / "labels.sqlite")
    s.add_task("pair", images[:2], prompt="which is nicer?")
    s.add_task("pair", images[2:], prompt="which is nicer?")
    s.add_task("list", images, prompt="rank these")
    s.add_task("rating", images[:1], prompt="rate this")
    return s
