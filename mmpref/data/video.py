"""Writing frame sequences as MP4 (H.264 through imageio-ffmpeg) or GIF, atomically.

It lives in the data layer because both image/video scoring and robot-policy rendering write videos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def save_video(frames: Sequence[np.ndarray | Image.Image], path: str | Path, fps: int = 8) -> Path:
    """Write frames (``[H, W, 3]`` uint8 or PIL) as MP4 (H.264, imageio-ffmpeg) or GIF, by suffix, atomically."""
    import os
    import tempfile

    from mmpref.data.io import atomic_write

    path = Path(path)
    images = [
        f.convert("RGB") if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, np.uint8)) for f in frames
    ]
    if not images:
        raise ValueError(f"{path}: no frames to write")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        with atomic_write(path, "wb") as handle:
            images[0].save(
                handle, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
            )
        return path
    if suffix != ".mp4":
        raise ValueError(f"{path}: write videos as .mp4 or .gif")
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".mp4")
    os.close(fd)
    try:  # ffmpeg writes by path: write a temporary file beside the target, then move it over
        iio.imwrite(
            tmp,
            np.stack([np.asarray(im) for im in images]),
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",  # the format browsers decode
            macro_block_size=1,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
