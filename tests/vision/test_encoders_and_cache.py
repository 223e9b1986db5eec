from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmpref.vision.cache import EmbeddingCache, content_hash
from mmpref.vision.encoders import EfficientNetLite0Encoder, OpenClipImageEncoder


@pytest.fixture(scope="module")
def effnet():
    return EfficientNetLite0Encoder()


def test_efficientnet_uses_the_real_imagenet_weights(effnet):
    import skimage.data

    cat, coffee = Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())
    features, probs = effnet.embed_and_classify([cat, coffee, Image.new("RGB", (1, 1), (128, 128, 128))])
    assert features.shape == (3, 1280) and np.isfinite(features).all()
    assert 281 <= probs[0].argmax() <= 285  # a domestic cat class (tabby, tiger cat, Persian, Siamese, Egyptian)
    assert probs[1].argmax() in (504, 967, 968)  # coffee mug, espresso, cup
    np.testing.assert_allclose(effnet.embed_images([cat])[0], features[0], rtol=1e-4, atol=1e-4)


def test_open_clip_loads_local_weights(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "MmprefTinyClip.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "MmprefTinyClip.json"))
    torch.manual_seed(0)
    reference, _, _ = open_clip.create_model_and_transforms("MmprefTinyClip", pretrained=None)
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(tmp_path / "tiny.safetensors"))
    encoder = OpenClipImageEncoder("MmprefTinyClip", pretrained=tmp_path / "tiny.safetensors")
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    with torch.no_grad():
        want = reference.eval().encode_image(encoder.preprocess(image)[None]).numpy()
    np.testing.assert_allclose(encoder.embed_images([image]), want, rtol=1e-5, atol=1e-6)
    assert encoder.dim == 32 and "tiny" in encoder.encoder_id
    with pytest.raises(FileNotFoundError, match="local checkpoint"):
        OpenClipImageEncoder("MmprefTinyClip", pretrained=tmp_path / "missing.bin")


def test_cache_is_keyed_by_content_and_encoder(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(a)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(b)
    calls = []

    def compute(paths):
        calls.append([p.name for p in paths])
        return np.stack([np.full(3, float(len(p.name) + i)) for i, p in enumerate(paths)])

    cache = EmbeddingCache(tmp_path / "cache", "enc-1")
    first = cache.embed([a, b], compute)
    again = cache.embed([b, a], compute)
    np.testing.assert_array_equal(again, first[::-1])
    assert calls == [["a.png", "b.png"]] and (cache.hits, cache.misses) == (2, 2)
    moved = tmp_path / "moved.png"
    a.rename(moved)  # same bytes, new name: still a hit
    cache.embed([moved], compute)
    assert len(calls) == 1
    Image.new("RGB", (4, 4), (7, 7, 7)).save(moved)  # new content: a miss
    cache.embed([moved], compute)
    assert len(calls) == 2
    other = EmbeddingCache(tmp_path / "cache", "enc-2")  # other weights never share entries
    other.embed([b], compute)
    assert len(calls) == 3
    entry = cache._entry(content_hash(b))
    entry.write_bytes(b"corrupt")  # a damaged entry is recomputed, not trusted
    cache.embed([b], compute)
    assert len(calls) == 4 and cache.get(content_hash(b)) is not None
