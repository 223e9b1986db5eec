"""ManifestFeatureDataModule passes ``media_root`` to the manifest reader (the fix its containment error names)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmpref.errors import MmprefError
from mmpref.reward.datamodule import ManifestFeatureDataModule


def test_media_root_reaches_the_manifest_reader(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "table").mkdir()
    Image.new("RGB", (32, 32), (200, 80, 40)).save(tmp_path / "images" / "x.png")
    manifest = tmp_path / "table" / "train.jsonl"
    record = {"type": "pair", "id": "p1", "a": "../images/x.png", "b": [0.0, 1.0], "label": 1}
    manifest.write_text(json.dumps(record) + "\n")
    with pytest.raises(MmprefError, match="outside the media root"):
        ManifestFeatureDataModule(manifest).setup("fit")
    # allowed now: the path is read and checked, and the module's own rule (inline features only) speaks next
    with pytest.raises(MmprefError, match="inline feature vectors"):
        ManifestFeatureDataModule(manifest, media_root=str(tmp_path / "images")).setup("fit")
