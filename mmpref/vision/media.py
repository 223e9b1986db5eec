"""Reading images and videos robustly: one clear error per unreadable file, bounded memory for huge inputs.

Images: anything Pillow decodes (PNG, JPEG, WebP, GIF first frame, ...), from a path or from bytes; greyscale,
palette and alpha images become RGB. Very large images are reduced while decoding (JPEG draft mode) or right after,
so a 10,000 px photo costs one decode, not an encoder pass at full size.

Videos: MP4/WebM/AVI/MOV (through imageio's ffmpeg plugin), animated GIF, or a folder of frames (sorted by name).
Frames are sampled evenly down to ``max_frames``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmpref.data.video import save_video  # noqa: F401  (writing lives in data: control uses it too)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif"})
# Pillow refuses images above ~179 M pixels as decompression bombs; a 10,000 × 10,000 photo (100 M) is legitimate
# input here, so the limit is raised to 400 M pixels (about 1.2 GB decoded) and images are shrunk right away.
MAX_PIXELS = 400_000_000


class MediaError(ValueError):
    """An image or video that cannot be read: the message names the file and what to do."""


def _name(source: str | Path | bytes) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)


def load_image(source: str | Path | bytes, max_side: int | None = 1024) -> Image.Image:
    """Decode one image to RGB.

    Args:
        source: a path or encoded bytes.
        max_side: shrink (keeping the aspect ratio) so that the longer side is at most this; ``None`` keeps it.

    Raises:
        MediaError: the file is missing, not an image, truncated, or beyond ``MAX_PIXELS``.
    """
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    name = _name(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise MediaError(f"{name}: file not found; check the path") from None
    except IsADirectoryError:
        raise MediaError(f"{name}: is a folder, not an image") from None
    try:
        with handle, Image.open(handle) as image:
            if max_side is not None and image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))  # decode at a reduced scale: fast and small
            image = ImageOps.exif_transpose(image)
            image.load()
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise MediaError(f"{name}: larger than {MAX_PIXELS:,} pixels ({err}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MediaError(
            f"{name}: not a readable image ({err.__class__.__name__}: {err}); re-encode or remove it"
        ) from None
    if rgb.width < 1 or rgb.height < 1:
        raise MediaError(f"{name}: image has no pixels")
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return rgb


def is_video(path: str | Path) -> bool:
    """Whether a path is a video: a video file suffix, or a folder holding image frames."""
    path = Path(path)
    if path.is_dir():
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
    if not path.exists():
        raise MediaError(f"{path}: file not found; check the path")
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise MediaError(f"{path}: folder holds no image frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [load_image(frames[i], max_side) for i in _even_indices(len(frames), max_frames)]
    try:
        import imageio.v3 as iio

        array = iio.imread(path, index=None)  # [T, H, W, C] (a GIF, or a video through ffmpeg)
    except Exception as err:  # imageio raises plugin-specific errors
        raise MediaError(
            f"{path}: not a readable video ({err.__class__.__name__}: {err}); re-encode it as MP4 "
            "(H.264) or GIF, or give a folder of frames"
        ) from None
    array = np.asarray(array)
    if array.ndim == 3:  # a single frame (or a greyscale stack read as one image)
        array = array[None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise MediaError(f"{path}: decoded to shape {array.shape}, expected frames [T, H, W, C]")
    frames = []
    for i in _even_indices(array.shape[0], max_frames):
        frame = Image.fromarray(np.ascontiguousarray(array[i, ..., :3] if array.shape[-1] >= 3 else array[i, ..., 0]))
        frame = frame.convert("RGB")
        if max_side is not None and max(frame.size) > max_side:
            frame.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        frames.append(frame)
    return frames
