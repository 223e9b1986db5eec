"""Checking media before anything trusts them: pixel limit, header-first checks, video probes, path containment.

Every reader of user media (JSONL manifests, Pick-a-Pic Parquet, ratings tables, the label store, the scoring and
taste readers through :func:`decode_image`) goes through this module, so there is one limit and one check:

* **Pixel limit.** An image (or a video frame) may have at most :func:`max_pixels` pixels, ``200,000,000`` by
  default or the value of the environment variable ``MMPREF_MAX_PIXELS``. The size is read from the file header,
  before any pixel is decoded, so a decompression bomb (a few kB of PNG declaring 10⁹ pixels) costs nothing. A
  decoded pixel costs at most 4 bytes in Pillow, so the default bounds a full decode at 800 MB.
* **Bounded decoding.** :func:`decode_image` shrinks while decoding: JPEG in draft mode (1/2 .. 1/8 scale), other
  formats by converting and box-reducing horizontal strips of the decoded image, so peak memory is the decoded
  image in its own mode (1-4 bytes per pixel) plus a few MB, never an RGB copy at full size.
* **Media are media.** :func:`check_media` accepts a regular file whose first bytes are a known image (PNG, JPEG,
  GIF, WebP, BMP, TIFF) or video container (MP4/MOV, WebM/Matroska, AVI), that agrees with its suffix, decodes (an
  image, fully: a truncated one fails) or probes (a video: its container's declared size, its metadata, its first
  frame), or a folder of such frames. Anything else (a text file named ``.png``, ``/etc/passwd``, a FIFO) is refused.
* **Containment.** :func:`resolve_media_path` resolves a path (relative paths against a base folder), follows
  symlinks, and refuses it unless the result lies inside one of the allowed roots.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mmpref.errors import MmprefError

MAX_PIXELS_ENV = "MMPREF_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 200_000_000
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_FILE_SUFFIXES = frozenset({".mp4", ".m4v", ".webm", ".avi", ".mov", ".mkv"})
FORMATS = "PNG, JPEG, GIF, WebP, BMP or TIFF images, MP4/MOV, WebM/MKV or AVI videos, or a folder of frames"
_STRIP_PIXELS = 4_000_000  # pixels per strip when converting a large decoded image: a few MB at a time


class MediaError(MmprefError):
    """A media file that cannot be used: the message names the file, what is wrong and what to do.

    ``reason`` is the same text without the file name, for messages that name the file themselves.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def media_error(name: str, reason: str) -> MediaError:
    """A :class:`MediaError` for the file ``name`` (its message is ``"name: reason"``)."""
    return MediaError(f"{name}: {reason}", reason)


def max_pixels() -> int:
    """The pixel limit: ``MMPREF_MAX_PIXELS`` if set (a whole number, ``_`` allowed), else 200,000,000."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise MediaError(
            f"environment variable {MAX_PIXELS_ENV}={raw!r} is not a positive whole number of pixels; "
            f"set e.g. {MAX_PIXELS_ENV}={2 * DEFAULT_MAX_PIXELS} or unset it"
        )
    return value


def limit_reason(width: int, height: int, limit: int) -> str:
    """Why an image of ``width`` × ``height`` is refused: its size, the limit and how to raise it."""
    return (
        f"too large: {width} × {height} = {width * height:,} pixels is over the limit of {limit:,} pixels; "
        f"downscale it, or raise the limit with the environment variable {MAX_PIXELS_ENV} (e.g. "
        f"{MAX_PIXELS_ENV}={width * height}; a decoded pixel takes up to 4 bytes of memory)"
    )


# --- what a file is ----------------------------------------------------------------------------------------------


def sniff_mime(head: bytes) -> str | None:
    """The media type that a file's first bytes (32 are enough) announce, or ``None`` if not a known one."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith(b"BM") and len(head) >= 26:
        return "image/bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"):
            return None  # HEIF/AVIF stills: not decodable here
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    return None


@dataclass(frozen=True)
class MediaInfo:
    """A checked media item: ``kind`` ``"image"`` or ``"video"``, its ``mime`` type, its resolved ``path``."""

    path: Path
    kind: str
    mime: str


def read_head(path: Path, name: str) -> bytes:
    """The first 64 bytes of a regular, non-empty file; a :class:`MediaError` for anything else."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise media_error(name, "file not found; check the path") from None
    except OSError as err:
        raise media_error(name, f"unreadable ({err.strerror or err}); check the path and its permissions") from None
    if not stat.S_ISREG(info.st_mode):
        raise media_error(name, f"not a regular file (a device, pipe or socket); give one of: {FORMATS}")
    if info.st_size == 0:
        raise media_error(name, "empty (0 bytes); re-create or remove the file")
    try:
        with open(path, "rb") as handle:
            return handle.read(64)
    except OSError as err:
        raise media_error(name, f"unreadable ({err.strerror or err}); check its permissions") from None


def check_media(path: str | Path, *, decode: bool = True, limit: int | None = None) -> MediaInfo:
    """Check that ``path`` is a usable image or video (see the module docstring) and say which.

    Args:
        path: a file, or a folder of frames (a video).
        decode: decode images fully and read a video's first frame; ``False`` checks the header and size only.
        limit: pixel limit (default :func:`max_pixels`).

    Raises:
        MediaError: naming the file, what is wrong and the fix.
    """
    path = Path(path)
    name = str(path)
    try:
        is_dir = path.is_dir()
    except OSError as err:  # e.g. a name longer than the file system allows
        raise media_error(name, f"an unusable path ({err.strerror or err}); fix the path") from None
    if is_dir:
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise media_error(name, f"an empty folder: it holds no image frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for frame in frames if decode else frames[:1]:
            if not frame.resolve().is_relative_to(path.resolve()):
                raise media_error(str(frame), "a link out of its frame folder; copy the frame in instead")
            check_media(frame, decode=decode, limit=limit)
        return MediaInfo(path, "video", "video/x-frames")
    mime = sniff_mime(read_head(path, name))
    if mime is None:
        raise media_error(name, f"not an image or video this reader knows (its first bytes are not one of: {FORMATS})")
    suffix = path.suffix.lower()
    if (suffix in IMAGE_SUFFIXES and not mime.startswith("image/")) or (
        suffix in VIDEO_FILE_SUFFIXES and not mime.startswith("video/")
    ):
        raise media_error(
            name, f"misnamed: the name says {suffix} but the content is {mime}; rename it to match its content"
        )
    if mime.startswith("image/"):
        with open_image(path, limit=limit) as image:
            if decode:
                _decode_checked(image, name)
        return MediaInfo(path, "image", mime)
    from mmpref.data.video import probe_video  # the video module builds on this one's checks

    probe_video(path, decode=decode, limit=limit)
    return MediaInfo(path, "video", mime)


def resolve_media_path(value: str | Path, base: str | Path, roots: Sequence[str | Path]) -> Path:
    """Resolve a media path named in a file and check that it stays inside an allowed root.

    ``value`` is taken relative to ``base`` unless absolute; symlinks are followed (``Path.resolve``); the result
    must lie inside one of ``roots`` (each resolved too). Existence is not checked here.

    Raises:
        MediaError: for a path outside every root, a symlink loop, or a NUL character.
    """
    text = str(value)
    if "\x00" in text:
        raise media_error(repr(text), "not a path: it contains a NUL character; fix the path")
    path = Path(text) if os.path.isabs(text) else Path(base) / text
    try:
        resolved = path.resolve()
        allowed = [Path(root).resolve() for root in roots]
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
        raise media_error(str(path), f"unresolvable ({err}); remove the symlink loop") from None
    if not any(resolved.is_relative_to(root) for root in allowed):
        shown = ", ".join(repr(str(r)) for r in allowed)
        raise media_error(
            str(path),
            f"outside the media root: it resolves to {str(resolved)!r}, not under {shown}; move the file under "
            "the root, or allow its folder with --media-root (media_root= in Python)",
        )
    return resolved


# --- images -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_image(source: str | Path | bytes, *, limit: int | None = None) -> Iterator[Image.Image]:
    """Open an image lazily (header only) and refuse it when it has no pixels or more than the pixel limit.

    Raises:
        MediaError: missing, not an image, or too large (the message says the limit and how to raise it).
    """
    limit = max_pixels() if limit is None else limit
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    # Pillow's own bomb guard must not be stricter than this limit (it would refuse images the limit allows); it
    # stays in place above 2 × the limit, where its error is turned into this module's message below.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise media_error(name, "file not found; check the path") from None
    except IsADirectoryError:
        raise media_error(name, "is a folder, not an image") from None
    except OSError as err:
        raise media_error(name, f"unreadable ({err.strerror or err}); check the path and its permissions") from None
    with handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle)
        except Image.DecompressionBombError as err:
            found = re.search(r"\((\d+) pixels\)", str(err))
            pixels = f"{int(found.group(1)):,}" if found else "too many"
            raise media_error(
                name,
                f"too large: {pixels} pixels is over the limit of {limit:,} pixels; downscale it, or raise the "
                f"limit with the environment variable {MAX_PIXELS_ENV}",
            ) from None
        except Exception as err:  # Pillow's plugins raise many types for malformed headers
            raise media_error(
                name, f"not a readable image ({err.__class__.__name__}: {err}); re-encode or remove it"
            ) from None
        with image:
            width, height = image.size
            if width < 1 or height < 1:
                raise media_error(name, "empty: the image has no pixels; re-encode or remove it")
            if width * height > limit:
                raise media_error(name, limit_reason(width, height, limit))
            yield image


def _decode_checked(image: Image.Image, name: str, draft: bool = True) -> None:
    """Decode all of ``image``'s data; with ``draft``, JPEG at 1/8 scale (a truncation still fails, 1/64 memory)."""
    try:
        if draft and image.format == "JPEG":
            image.draft(None, (1, 1))
        image.load()
    except Exception as err:  # a truncated or corrupt stream: OSError, SyntaxError, ValueError, struct.error ...
        raise media_error(
            name, f"not a readable image ({err.__class__.__name__}: {err}); re-encode or remove it"
        ) from None


def check_image(data: bytes | str | Path, *, limit: int | None = None) -> str | None:
    """Return ``None`` if ``data`` (bytes or a path) decodes as an image within the pixel limit, else the reason."""
    try:
        if not isinstance(data, bytes):
            mime = sniff_mime(read_head(Path(data), str(data)))
            if mime is None or not mime.startswith("image/"):
                return f"not an image (its first bytes are not PNG, JPEG, GIF, WebP, BMP or TIFF; got {mime or '?'})"
        with open_image(data, limit=limit) as image:
            _decode_checked(image, "")
    except MediaError as err:
        if err.reason.startswith("file not found"):
            return "missing (file not found)"
        return err.reason
    return None


_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _to_rgb(image: Image.Image, factor: int) -> Image.Image:
    """RGB at 1/``factor`` scale (box average), converted strip by strip so no full-size copy is ever made."""
    if factor == 1 and image.mode == "RGB":
        return image.copy()
    width, height = image.size
    if width * height <= _STRIP_PIXELS:
        rgb = image.convert("RGB")
        return rgb.reduce(factor) if factor > 1 else rgb
    out = Image.new("RGB", ((width + factor - 1) // factor, (height + factor - 1) // factor))
    rows = factor * max(1, _STRIP_PIXELS // (width * factor))
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows))).convert("RGB")
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def decode_image(source: str | Path | bytes, max_side: int | None = 1024, *, limit: int | None = None) -> Image.Image:
    """Decode one image to RGB, shrunk so that its longer side is at most ``max_side`` (``None``: full size).

    Peak memory is the decoded image in its own mode plus a few MB (JPEG: decoded at the smallest draft scale that
    keeps ``max_side``); EXIF orientation is applied after shrinking.

    Raises:
        MediaError: missing, not an image, truncated, or over the pixel limit.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    with open_image(source, limit=limit) as image:
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:  # a malformed EXIF block: ignore the orientation, not the image
            orientation = 1
        if max_side is not None and image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))  # decode at a reduced scale: fast and small
        _decode_checked(image, name, draft=False)
        factor = 1 if max_side is None else max(1, max(image.size) // (2 * max_side))
        try:
            rgb = _to_rgb(image, factor)
        except Exception as err:  # an exotic mode Pillow cannot convert
            raise media_error(name, f"not convertible to RGB ({err}); re-encode it as PNG or JPEG") from None
    if orientation in _ORIENTATION:
        rgb = rgb.transpose(_ORIENTATION[orientation])
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return rgb
