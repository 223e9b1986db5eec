"""Reading images and videos robustly: one clear error per unreadable file, bounded memory for huge inputs.

Images: anything Pillow decodes (PNG, JPEG, WebP, GIF first frame, ...), from a path or from bytes; greyscale,
palette and alpha images become RGB. The pixel limit and the bounded decoding live in :mod:`mmpref.data.media`
(one limit for every reader: ``MMPREF_MAX_PIXELS``, 200 M pixels by default); a 10,000 px photo costs one decode at
a reduced scale, not an RGB copy at full size.

Videos: MP4/WebM/AVI/MOV (through imageio's ffmpeg plugin), animated GIF, or a folder of frames (sorted by name).
Frames are sampled evenly down to ``max_frames``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mmpref.data.media import (  # noqa: F401  (MediaError and max_pixels are part of this module's API)
    DEFAULT_MAX_PIXELS,
    MediaError,
    decode_image,
    max_pixels,
    open_image,
)
from mmpref.data.video import probe_video, save_video  # noqa: F401  (save_video: writing lives in data)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif"})
MAX_PIXELS = DEFAULT_MAX_PIXELS  # the default; the limit in force is max_pixels() (MMPREF_MAX_PIXELS)


def load_image(source: str | Path | bytes, max_side: int | None = 1024) -> Image.Image:
    """Decode one image to RGB.

    Args:
        source: a path or encoded bytes.
        max_side: shrink (keeping the aspect ratio) so that the longer side is at most this; ``None`` keeps it.

    Raises:
        MediaError: the file is missing, not an image, truncated, or beyond the pixel limit (the message says the
            limit and how to raise it).
    """
    return decode_image(source, max_side)


def is_video(path: str | Path) -> bool:
    """Whether a path is a video: a video file suffix, or a folder holding image frames."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError:  # an unusable path: not a video; the image reader says what is wrong with it
        return False
    if is_dir:
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    return path.suffix.lower() in VIDEO_SUFFIXES


def _even_indices(count: int, max_frames: int) -> list[int]:
    if count <= max_frames:
        return list(range(count))
    return [int(round(i)) for i in np.linspace(0, count - 1, max_frames)]


def load_video(path: str | Path, max_frames: int = 16, max_side: int | None = 256) -> list[Image.Image]:
    """Decode a video (file or frame folder) into at most ``max_frames`` RGB frames, evenly spaced.

    Raises:
        MediaError: missing, unreadable or empty.
    """
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as err:  # e.g. a name longer than the file system allows
        raise MediaError(f"{path}: an unusable path ({err.strerror or err}); fix the path") from None
    if not exists:
        raise MediaError(f"{path}: file not found; check the path")
    if is_dir:
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise MediaError(f"{path}: folder holds no image frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [load_image(frames[i], max_side) for i in _even_indices(len(frames), max_frames)]
    if path.suffix.lower() == ".gif":
        return _gif_frames(path, max_frames, max_side)
    probe_video(path, decode=False)  # container size and frame size against the pixel limit, before decoding
    try:
        import imageio.v2 as imageio

        reader = imageio.get_reader(path, format="FFMPEG")
    except Exception as err:  # imageio raises plugin-specific errors
        raise MediaError(
            f"{path}: not a readable video ({err.__class__.__name__}: {err}); re-encode it as MP4 "
            "(H.264) or GIF, or give a folder of frames"
        ) from None
    frames = []
    try:
        count = reader.count_frames()
        wanted = set(_even_indices(count, max_frames))
        for index, array in enumerate(reader):  # one frame in memory at a time, not the whole clip
            if index in wanted:
                frames.append(_frame_image(np.asarray(array), max_side))
            if len(frames) == len(wanted):
                break
    except Exception as err:
        raise MediaError(
            f"{path}: frames could not be decoded ({err.__class__.__name__}: {err}); re-encode it"
        ) from None
    finally:
        reader.close()
    if not frames:
        raise MediaError(f"{path}: the video holds no frames; re-export it")
    return frames


def _frame_image(array: np.ndarray, max_side: int | None) -> Image.Image:
    frame = Image.fromarray(np.ascontiguousarray(array[..., :3] if array.ndim == 3 else array)).convert("RGB")
    if max_side is not None and max(frame.size) > max_side:
        frame.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return frame


def _gif_frames(path: Path, max_frames: int, max_side: int | None) -> list[Image.Image]:
    """Frames of an animated GIF, decoded one at a time (the pixel limit applies to the frame size)."""
    frames = []
    with open_image(path) as image:
        try:
            for index in _even_indices(getattr(image, "n_frames", 1), max_frames):
                image.seek(index)
                frame = image.convert("RGB")
                if max_side is not None and max(frame.size) > max_side:
                    frame.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
                frames.append(frame)
        except Exception as err:  # a truncated or corrupt frame
            raise MediaError(f"{path}: not a readable GIF ({err.__class__.__name__}: {err}); re-encode it") from None
    return frames
