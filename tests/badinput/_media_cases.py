"""Generators of bad media files for the bad-input suite (bombs, truncations, impostors, empty files).

Every case is made here, at test time, from a few bytes of code: nothing is stored in the repository.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(size=(16, 12), colour=(200, 30, 60), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 1).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size=(64, 48), colour=(20, 140, 220)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int, bit_depth: int = 1, colour_type: int = 0, full: bool = True) -> bytes:
    """A valid PNG of ``width`` × ``height`` pixels, all zero: a few kB on disk, ``width * height`` decoded.

    With ``full=False`` only one row of data follows the header (the header alone declares the size).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    data = bytearray()
    for _ in range(height if full else 1):
        data += compressor.compress(row)
    data += compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", bytes(data)) + _chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare ``width`` × ``height``."""
    data = bytearray(jpeg_bytes())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def mp4_bytes(tmp: Path, frames: int = 6) -> bytes:
    """A real H.264 MP4 (through the project's own writer), as bytes."""
    from mmpref.data.video import save_video

    clip = [np.full((32, 48, 3), 30 * i, np.uint8) for i in range(frames)]
    path = save_video(clip, tmp / "_source_clip.mp4")
    data = path.read_bytes()
    path.unlink()
    return data


def container_bytes(tmp: Path, suffix: str, codec: str) -> bytes:
    """A real video in another container (WebM/VP8, AVI/MPEG-4, MKV/H.264) through ffmpeg, as bytes."""
    import imageio.v3 as iio

    path = tmp / f"_source{suffix}"
    iio.imwrite(path, np.stack([np.full((32, 48, 3), 30 * i, np.uint8) for i in range(6)]), fps=8, codec=codec)
    data = path.read_bytes()
    path.unlink()
    return data


def gif_bytes(frames: int = 4) -> bytes:
    buf = io.BytesIO()
    images = [Image.new("RGB", (24, 16), (40 * i, 10, 10)) for i in range(frames)]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100)
    return buf.getvalue()


BAD_MEDIA_NAMES = (
    "bomb-jpeg-declared",
    "bomb-png-1bit-20000",
    "bomb-png-header-65535",
    "bomb-png-zero-width",
    "empty-mp4",
    "empty-png",
    "heic-like",
    "html-as-jpg",
    "mp4-ftyp-only",
    "mp4-named-png",
    "passwd-like",
    "png-header-only",
    "png-named-mp4",
    "random-bytes-png",
    "text-as-mp4",
    "text-as-png",
    "truncated-avi-tail",
    "truncated-gif",
    "truncated-jpeg",
    "truncated-mkv-half",
    "truncated-mp4-half",
    "truncated-mp4-tail",
    "truncated-png",
    "truncated-webm-tail",
)


def bad_media(tmp: Path) -> dict[str, tuple[str, Callable[[], bytes]]]:
    """Name → (file name, bytes maker) of files that must be refused as media, each for its own reason."""
    mp4 = mp4_bytes(tmp)
    webm, avi, mkv = (container_bytes(tmp, *c) for c in ((".webm", "libvpx"), (".avi", "mpeg4"), (".mkv", "libx264")))
    png = png_bytes()
    jpeg = jpeg_bytes()
    return {
        "empty-png": ("empty.png", lambda: b""),
        "empty-mp4": ("empty.mp4", lambda: b""),
        "text-as-png": ("notes.png", lambda: b"just some text, not an image\n" * 4),
        "text-as-mp4": ("notes.mp4", lambda: b"#!/bin/sh\necho not a video\n"),
        "passwd-like": ("passwd", lambda: b"root:x:0:0:root:/root:/bin/bash\n"),
        "html-as-jpg": ("page.jpg", lambda: b"<html><script>alert(1)</script></html>"),
        "truncated-png": ("cut.png", lambda: png[: len(png) // 2]),
        "png-header-only": ("head.png", lambda: png[:33]),
        "truncated-jpeg": ("cut.jpg", lambda: jpeg[: len(jpeg) // 2]),
        "truncated-gif": ("cut.gif", lambda: gif_bytes()[:40]),
        "truncated-mp4-half": ("half.mp4", lambda: mp4[: len(mp4) // 2]),
        "truncated-mp4-tail": ("tail.mp4", lambda: mp4[:-7]),
        "mp4-ftyp-only": ("ftyp.mp4", lambda: mp4[:32]),
        "truncated-webm-tail": ("tail.webm", lambda: webm[:-20]),
        "truncated-avi-tail": ("tail.avi", lambda: avi[:-20]),
        "truncated-mkv-half": ("half.mkv", lambda: mkv[: len(mkv) // 2]),
        "png-named-mp4": ("image.mp4", lambda: png),
        "mp4-named-png": ("clip.png", lambda: mp4),
        "bomb-png-1bit-20000": ("bomb.png", lambda: bomb_png(20_000, 20_000)),
        "bomb-png-header-65535": ("declared.png", lambda: bomb_png(65_535, 65_535, 8, 2, full=False)),
        "bomb-png-zero-width": ("zero.png", lambda: bomb_png(0, 10, full=False)),
        "bomb-jpeg-declared": ("declared.jpg", lambda: jpeg_declaring(65_000, 65_000)),
        "random-bytes-png": ("noise.png", lambda: np.random.default_rng(0).bytes(3000)),
        "heic-like": ("photo.png", lambda: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40),
    }


def write_case(folder: Path, file_name: str, make: Callable[[], bytes]) -> Path:
    path = folder / file_name
    path.write_bytes(make())
    return path
