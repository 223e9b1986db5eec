"""Bad media through every reader that takes them: refused with the documented exception, naming the file.

Readers: :func:`check_media` / :func:`check_image` / :func:`load_image` (library), JSONL manifests, ratings tables and
Pick-a-Pic Parquet (paths and bytes). Cases are generated (see ``_media_cases``): bombs, truncations, impostors,
empty files; then the containment rule (traversal, absolute paths, symlinks out, loops, NUL) and the pixel limit.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pytest
from _media_cases import (
    BAD_MEDIA_NAMES,
    bad_media,
    bomb_png,
    container_bytes,
    gif_bytes,
    jpeg_bytes,
    mp4_bytes,
    png_bytes,
)
from PIL import Image

from mmpref.data import DataError, read_jsonl_manifest, read_pickapic_parquet, read_ratings_table
from mmpref.data.media import MAX_PIXELS_ENV, MediaError, check_image, check_media, decode_image, max_pixels
from mmpref.vision.media import load_image, load_video

CASES = list(BAD_MEDIA_NAMES)
READERS = ["check_media", "load_image", "jsonl", "ratings_csv", "pickapic_path", "pickapic_bytes", "dpo_bytes"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Every bad case's (file name, bytes), generated once per module."""
    tmp = tmp_path_factory.mktemp("made")
    return {name: (file_name, make()) for name, (file_name, make) in bad_media(tmp).items()}


@pytest.fixture
def good(tmp_path):
    (tmp_path / "good.png").write_bytes(png_bytes())
    return tmp_path / "good.png"


def test_the_case_list_covers_every_generator(tmp_path):
    assert sorted(bad_media(tmp_path)) == CASES


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", CASES)
def test_bad_media_is_refused_by_every_reader(made, tmp_path, good, case, reader):
    file_name, data = made[case]
    if case == "png-named-mp4" and reader in ("load_image", "pickapic_bytes", "dpo_bytes"):
        pytest.skip("a valid PNG: only its name is wrong, and these readers take no name")
    bad = tmp_path / file_name
    bad.write_bytes(data)
    if reader == "dpo_bytes":
        from mmpref.vision.diffusion.data import prepare_image  # imported before the clock starts: torch is slow

    start = time.perf_counter()
    if reader == "check_media":
        with pytest.raises(MediaError) as info:
            check_media(bad)
        assert file_name in str(info.value)
    elif reader == "load_image":
        with pytest.raises(MediaError) as info:
            load_image(bad)
        assert file_name in str(info.value)
    elif reader == "dpo_bytes":  # Diffusion-DPO decodes Parquet image bytes itself: the same check, as a reason
        pixels, reason = prepare_image(data, 16, "center", np.random.default_rng(0))
        assert pixels is None and "does not decode as an image" in reason
    elif reader == "jsonl":
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(json.dumps({"type": "pair", "id": "p", "a": "good.png", "b": file_name, "label": 1}))
        with pytest.raises(DataError) as info:
            read_jsonl_manifest(manifest)
        assert "m.jsonl" in str(info.value) and file_name in str(info.value) and "line 1: field 'b'" in str(info.value)
    elif reader == "ratings_csv":
        table = tmp_path / "r.csv"
        pd.DataFrame({"image": ["good.png", file_name], "user": ["u", "u"], "rating": [3, 4]}).to_csv(table)
        with pytest.raises(DataError) as info:
            read_ratings_table(table)
        message = str(info.value)
        assert "r.csv" in message and file_name in message and "row 1: column 'image'" in message
    else:
        table = tmp_path / "p.parquet"
        bad_value = file_name if reader == "pickapic_path" else data
        pd.DataFrame({"caption": ["c"], "jpg_0": [bad_value], "jpg_1": ["good.png"], "label_0": [1.0]}).to_parquet(
            table
        )
        with pytest.raises(DataError) as info:
            read_pickapic_parquet(table, ties="keep")
        assert "p.parquet" in str(info.value) and "row 0: column 'jpg_0'" in str(info.value)
        if reader == "pickapic_path":
            assert file_name in str(info.value)
    assert time.perf_counter() - start < 5, "a bad file must be refused quickly (bombs: from the header)"


def test_good_media_pass_and_say_their_kind(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "c.gif").write_bytes(gif_bytes())
    (tmp_path / "d.mp4").write_bytes(mp4_bytes(tmp_path))
    (tmp_path / "e.img").write_bytes(png_bytes())  # an unknown suffix: the content decides
    for name, codec in (("f.webm", "libvpx"), ("g.avi", "mpeg4"), ("h.mkv", "libx264")):
        (tmp_path / name).write_bytes(container_bytes(tmp_path, name[1:], codec))
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        (frames / f"{i}.png").write_bytes(png_bytes(colour=(i, 0, 0)))
    kinds = {p: (check_media(tmp_path / p).kind, check_media(tmp_path / p).mime) for p in os.listdir(tmp_path)}
    assert kinds == {
        "a.png": ("image", "image/png"),
        "b.jpg": ("image", "image/jpeg"),
        "c.gif": ("image", "image/gif"),
        "d.mp4": ("video", "video/mp4"),
        "e.img": ("image", "image/png"),
        "f.webm": ("video", "video/webm"),
        "g.avi": ("video", "video/x-msvideo"),
        "h.mkv": ("video", "video/x-matroska"),
        "frames": ("video", "video/x-frames"),
    }
    assert len(load_video(tmp_path / "d.mp4", max_frames=3)) == 3 and len(load_video(tmp_path / "c.gif")) == 4
    assert len(load_video(tmp_path / "f.webm")) == 6


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(MediaError, match="pipe.png: not a regular file"):
        check_media(fifo)
    assert "not a regular file" in check_image(fifo)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"type": "rating", "id": "r", "item": "pipe.png", "rating": 3}))
    with pytest.raises(DataError, match="pipe.png.* is not a regular file"):
        read_jsonl_manifest(manifest)


# --- the pixel limit ----------------------------------------------------------------------------------------------


def test_pixel_limit_names_itself_and_the_variable_that_raises_it(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(size=(40, 30)))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    assert max_pixels() == 1000
    with pytest.raises(MediaError) as info:
        load_image(path)
    message = str(info.value)
    assert "wide.png" in message and "1,200 pixels" in message and "limit of 1,000" in message
    assert MAX_PIXELS_ENV in message
    assert "too large" in check_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1_200")
    assert load_image(path).size == (40, 30)
    for bad in ("lots", "-5", "0", "1e9"):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(MediaError, match=MAX_PIXELS_ENV):
            load_image(path)


def test_a_bomb_past_pillows_own_guard_gets_the_same_message(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    path = tmp_path / "b.png"
    path.write_bytes(bomb_png(65_535, 65_535, 8, 2, full=False))  # 4.3 G pixels: Pillow's guard fires first
    with pytest.raises(MediaError, match=rf"b.png: too large: 4,294,836,225 pixels .*limit of 100 .*{MAX_PIXELS_ENV}"):
        decode_image(path)


def test_large_images_are_reduced_with_the_right_colours_and_orientation(tmp_path):
    gradient = np.tile(np.linspace(0, 255, 2600, dtype=np.float32), (2000, 1)).astype(np.uint8)
    image = Image.fromarray(np.stack([gradient, 255 - gradient, np.full_like(gradient, 77)], -1))
    image.save(tmp_path / "g.png", compress_level=1)
    ours = np.asarray(decode_image(tmp_path / "g.png", max_side=256), np.float32)
    reference = np.asarray(image.resize(decode_image(tmp_path / "g.png", 256).size, Image.Resampling.BOX), np.float32)
    assert ours.shape == reference.shape and max(ours.shape[:2]) == 256
    assert np.abs(ours - reference).mean() < 2.0
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png")
    reduced = np.asarray(decode_image(tmp_path / "p.png", max_side=128), np.float64)
    assert np.abs(reduced.mean((0, 1)) - np.asarray(palette.convert("RGB"), np.float64).mean((0, 1))).max() < 3
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.new("RGB", (300, 100), (0, 200, 0)).save(tmp_path / "o.jpg", exif=exif)
    assert decode_image(tmp_path / "o.jpg", max_side=64).size in ((21, 64), (22, 64))  # portrait after rotation


# --- containment --------------------------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path):
    """root/ holds the manifest and media; outside/ holds a real image that root/ must not reach."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "in.png").write_bytes(png_bytes())
    (outside / "out.png").write_bytes(png_bytes(colour=(1, 2, 3)))
    (outside / "secret.txt").write_text("root:x:0:0\n")
    (root / "link-out.png").symlink_to(outside / "out.png")
    (root / "link-dir").symlink_to(outside, target_is_directory=True)
    (root / "loop-a.png").symlink_to(root / "loop-b.png")
    (root / "loop-b.png").symlink_to(root / "loop-a.png")
    (root / "link-in.png").symlink_to(root / "in.png")
    return root, outside


ESCAPES = {
    "traversal": "../../../../../../../../etc/passwd",
    "traversal-png": "../../../../../../../../etc/passwd.png",
    "traversal-to-real-image": "../outside/out.png",
    "absolute-outside": "/etc/passwd",
    "absolute-real-image": "{outside}/out.png",
    "symlink-out": "link-out.png",
    "symlinked-folder-out": "link-dir/out.png",
    "dot-segments-out": "./sub/../../outside/secret.txt",
    "symlink-loop": "loop-a.png",
    "nul-byte": "in.png\x00.png",
}


@pytest.mark.parametrize("reader", ["jsonl", "ratings_csv", "pickapic_path"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_paths_leaving_the_media_root_are_refused(layout, case, reader):
    root, outside = layout
    value = ESCAPES[case].format(outside=outside)
    if reader == "jsonl":
        path = root / "m.jsonl"
        path.write_text(json.dumps({"type": "rating", "id": "r", "item": value, "rating": 3}) + "\n")
        read = lambda **kw: read_jsonl_manifest(path, **kw)  # noqa: E731
    elif reader == "ratings_csv":
        path = root / "r.parquet"
        pd.DataFrame({"image": [value], "user": ["u"], "rating": [3]}).to_parquet(path)
        read = lambda **kw: read_ratings_table(path, **kw)  # noqa: E731
    else:
        path = root / "p.parquet"
        pd.DataFrame({"caption": ["c"], "jpg_0": ["in.png"], "jpg_1": [value], "label_0": [0.0]}).to_parquet(path)
        read = lambda **kw: read_pickapic_parquet(path, ties="keep", **kw)  # noqa: E731
    with pytest.raises(DataError) as info:
        read()
    message = str(info.value)
    assert path.name in message
    expected = {"symlink-loop": "unresolvable", "nul-byte": "NUL"}.get(case, "outside the media root")
    assert expected in message, message
    if case in ("traversal-to-real-image", "absolute-real-image", "symlink-out", "symlinked-folder-out"):
        records = read(media_root=[root, outside])  # widening the root is explicit, and then it is allowed
        assert len(records) == 1


def test_links_that_stay_inside_the_root_are_fine(layout):
    root, _ = layout
    path = root / "m.jsonl"
    path.write_text(json.dumps({"type": "pair", "id": "p", "a": "link-in.png", "b": "in.png", "label": 1}) + "\n")
    (record,) = read_jsonl_manifest(path)
    assert record.a == record.b == str(root / "in.png")  # the resolved file is what is used later


def test_check_media_false_still_applies_containment(layout):
    root, _ = layout
    path = root / "m.jsonl"
    path.write_text(json.dumps({"type": "rating", "id": "r", "item": "../outside/secret.txt", "rating": 3}) + "\n")
    with pytest.raises(DataError, match="outside the media root"):
        read_jsonl_manifest(path, check_media=False)


@pytest.mark.parametrize("value", ["x" * 5000 + ".png", "d/" * 3000 + "a.png", "a" * 256 + "/b.png"])
def test_paths_the_file_system_cannot_hold_are_named_not_crashed_on(tmp_path, value):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"type": "rating", "id": "r", "item": value, "rating": 3}) + "\n")
    with pytest.raises(DataError, match="line 1: field 'item'"):
        read_jsonl_manifest(manifest)
    for reader in (check_media, load_image, load_video):
        with pytest.raises(MediaError, match="b.png|a.png|x.png"):
            reader(tmp_path / value)
    assert check_image(tmp_path / value)


def test_a_bad_pixel_limit_setting_is_one_error_naming_the_variable(tmp_path, good, monkeypatch):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"type": "pair", "id": "p", "a": "good.png", "b": "good.png", "label": 1}))
    monkeypatch.setenv(MAX_PIXELS_ENV, "a lot")
    with pytest.raises(MediaError, match=rf"{MAX_PIXELS_ENV}='a lot' is not a positive whole number"):
        read_jsonl_manifest(manifest)
    assert read_jsonl_manifest(manifest, check_media=False)  # nothing is decoded: the limit is not needed
