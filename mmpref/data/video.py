"""Videos in the data layer: writing them (MP4 or GIF, atomically) and probing them before anything trusts them.

:func:`save_video` writes frame sequences as MP4 (H.264 through imageio-ffmpeg) or GIF; :func:`probe_video` checks a
video file for :func:`mmpref.data.media.check_media`. It lives in the data layer because image/video scoring, the
label store and robot-policy rendering all use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmpref.data.media import MediaError, limit_reason, max_pixels, media_error, read_head, sniff_mime


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


def _check_boxes(path: Path, name: str) -> None:
    """An MP4/MOV file is a sequence of boxes (size, type); a file shorter than its boxes declare is truncated."""
    size = path.stat().st_size
    offset, seen = 0, set()
    with open(path, "rb") as handle:
        while offset < size:
            handle.seek(offset)
            header = handle.read(16)
            if len(header) < 8:
                raise media_error(name, f"truncated: {size - offset} stray byte(s) at the end; re-export the video")
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1:
                length = int.from_bytes(header[8:16], "big") if len(header) == 16 else 0
            elif length == 0:
                length = size - offset  # the last box runs to the end of the file
            if length < 8 or offset + length > size:
                raise media_error(
                    name,
                    f"truncated: box {kind!r} at byte {offset} declares {length} bytes but the file ends at "
                    f"{size}; re-export or re-download the video",
                )
            seen.add(kind)
            offset += length
    if b"moov" not in seen:
        raise media_error(name, "truncated or unfinished: it has no 'moov' box; re-export the video")


def _first_line(err: BaseException) -> str:
    """The first line of an error (ffmpeg's carry its whole stderr after it)."""
    return (str(err).strip().splitlines() or [""])[0]


def _vint(data: bytes, at: int) -> tuple[int, int, bool]:
    """An EBML variable-size integer at ``data[at]``: (value, length, all value bits set = "unknown size")."""
    first = data[at]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or at + length > len(data):
        raise ValueError("bad EBML size")
    value = first & (0xFF >> length)
    for byte in data[at + 1 : at + length]:
        value = (value << 8) | byte
    return value, length, value == (1 << (7 * length)) - 1


def _check_declared_size(path: Path, name: str, mime: str) -> None:
    """A container whose header declares more bytes than the file holds is truncated (AVI: RIFF; WebM/MKV: EBML)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4096)
    try:
        if mime == "video/x-msvideo":
            declared, what = int.from_bytes(head[4:8], "little") + 8, "RIFF"
        else:
            header_size, length, _ = _vint(head, 4)  # after the 4-byte EBML header ID
            at = 4 + length + header_size
            if head[at : at + 4] != b"\x18\x53\x80\x67":
                raise ValueError("no Segment after the EBML header")
            segment_size, length, unknown = _vint(head, at + 4)
            if unknown:
                return  # a live-stream file: no size to compare
            declared, what = at + 4 + length + segment_size, "Segment"
    except (ValueError, IndexError) as err:
        raise media_error(
            name, f"not a readable video (its container header is damaged: {err}); re-export it"
        ) from None
    if declared > size:
        raise media_error(
            name, f"truncated: its {what} header declares {declared} bytes but the file ends at {size}; re-export it"
        )


def probe_video(path: str | Path, *, decode: bool = True, limit: int | None = None) -> dict:
    """Open a video file with ffmpeg, check its frame size against the pixel limit and read its first frame.

    Returns:
        ffmpeg's metadata (``size``, ``fps``, ``duration``, ...).

    Raises:
        MediaError: unreadable, truncated (the container declares more bytes than the file holds: MP4/MOV boxes,
            the Matroska/WebM Segment, the AVI RIFF header), no frames, or frames over the pixel limit.
    """
    path = Path(path)
    name = str(path)
    limit = max_pixels() if limit is None else limit
    mime = sniff_mime(read_head(path, name))
    if mime in ("video/mp4", "video/quicktime"):
        _check_boxes(path, name)
    elif mime in ("video/x-msvideo", "video/webm", "video/x-matroska"):
        _check_declared_size(path, name, mime)
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise media_error(
            name, "checking videos needs imageio and imageio-ffmpeg; pip install 'mmpref[feedback]'"
        ) from None
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
    except Exception as err:  # imageio/ffmpeg raise several types for unreadable input
        raise media_error(
            name, f"not a readable video ({err.__class__.__name__}: {_first_line(err)}); re-encode it as MP4 (H.264)"
        ) from None
    try:
        meta = reader.get_meta_data()
        width, height = meta.get("size") or (0, 0)
        if width * height > limit:
            raise media_error(name, limit_reason(width, height, limit))
        if decode:
            frame = reader.get_next_data()
            if frame is None or frame.size == 0:
                raise media_error(name, "empty: the video has no frames; re-export it")
    except MediaError:
        raise
    except Exception as err:
        raise media_error(
            name, f"unreadable: no frame decodes ({err.__class__.__name__}: {_first_line(err)}); re-encode it as MP4"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            reader.close()
    return meta
