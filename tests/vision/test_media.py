from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmpref.vision.media import MediaError, is_video, load_image, load_video, save_video


def _bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_corrupted_and_missing_images_raise_one_clear_error(tmp_path):
    good = _bytes(Image.new("RGB", (8, 8), (10, 20, 30)))
    with pytest.raises(MediaError, match="<bytes>: not a readable image"):
        load_image(good[:20])  # truncated
    with pytest.raises(MediaError, match="not a readable image"):
        load_image(b"definitely not an image")
    with pytest.raises(MediaError, match="nowhere.png: file not found"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(MediaError, match="is a folder"):
        load_image(tmp_path)


def test_grey_one_pixel_and_alpha_images_become_rgb():
    tiny = load_image(_bytes(Image.new("L", (1, 1), 128)))
    assert tiny.mode == "RGB" and tiny.size == (1, 1) and tiny.getpixel((0, 0)) == (128, 128, 128)
    rgba = load_image(_bytes(Image.new("RGBA", (4, 3), (1, 2, 3, 0))))
    assert rgba.mode == "RGB" and rgba.size == (4, 3)


def test_a_10000_pixel_image_is_reduced_while_decoding(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (10_000, 10_000), (200, 100, 50)).save(path, quality=50)
    image = load_image(path, max_side=512)
    assert max(image.size) <= 512
    assert np.allclose(np.asarray(image).mean((0, 1)), (200, 100, 50), atol=3)


def test_videos_from_gif_mp4_and_frame_folders_including_one_frame(tmp_path):
    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(6)]
    gif = save_video(frames, tmp_path / "clip.gif")
    mp4 = save_video(frames, tmp_path / "clip.mp4")
    assert is_video(gif) and is_video(mp4)
    assert len(load_video(gif)) == 6
    decoded = load_video(mp4)
    assert len(decoded) == 6 and decoded[0].size == (48, 32)
    assert len(load_video(gif, max_frames=3)) == 3
    one = save_video(frames[:1], tmp_path / "one.gif")
    assert len(load_video(one)) == 1
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames[:4]):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    assert is_video(folder) and len(load_video(folder)) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="no image frames"):
        load_video(tmp_path / "empty")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(MediaError, match="bad.mp4: not a readable video"):
        load_video(tmp_path / "bad.mp4")
