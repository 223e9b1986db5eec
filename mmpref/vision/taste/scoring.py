"""Scoring images and videos for a person (or the population): embeddings through the cache, then the taste model.

Videos are scored by their frame-mean embedding (the personal model is trained on images); the learned temporal
head for motion-dependent preferences belongs to the unified reward model.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmpref.data.io import atomic_write
from mmpref.errors import MmprefError
from mmpref.vision.cache import EmbeddingCache
from mmpref.vision.encoders import ImageEncoder
from mmpref.vision.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, MediaError, is_video, load_image, load_video
from mmpref.vision.taste.model import UserProfile, enroll, load_taste_model, ratings_to_pairs


class ScoringError(MmprefError):
    """Bad input to scoring or enrollment: the message names what and how to fix it."""


_MAX_LIST_DEPTH = 32  # .txt lists naming lists: deeper than this is a mistake, not a catalogue
_MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _broken(path: Path) -> str | None:
    """Why ``path`` cannot be used (missing, dangling or looping symlink, unreadable name), or ``None``."""
    try:
        path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"a dangling symlink (to {os.readlink(path)!r}, which does not exist); fix or remove the link"
        return "not found; check the path"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink cycle (the link resolves to itself); fix or remove the link"
        return f"cannot be read ({err.strerror or err}); check the path and its permissions"
    except ValueError as err:  # an embedded NUL byte
        return f"not a usable path ({err})"
    return None


def collect_media(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (images, videos and frame folders inside) and ``.txt`` lists into media paths.

    Broken inputs are errors, never skipped, so the ranking always covers everything asked for: a missing path, a
    dangling symlink or a symlink cycle (given directly, listed in a ``.txt`` list, or found in a folder), a ``.txt``
    list that includes itself or another list in a cycle, lists nested deeper than 32, a list that is not UTF-8 text.
    A folder is scanned one level deep (its media files and its frame folders); a sub-folder that is a symlink to
    the folder itself or one of its ancestors is refused as a cycle.

    Raises:
        ScoringError: naming the path (and the list and line it came from) and the fix; or when nothing is found.
    """
    found: list[Path] = []
    for raw in inputs:
        _expand(Path(raw), "", (), found)
    if not found:
        raise ScoringError("nothing to score: give at least one image, video or folder")
    return found


def _expand(path: Path, origin: str, lists: tuple[Path, ...], found: list[Path]) -> None:
    """Add the media of one input to ``found``; ``origin`` says where it was named, ``lists`` the open .txt lists."""
    reason = _broken(path)
    if reason is not None:
        raise ScoringError(f"{origin}{path}: {reason}; give image/video files, folders or a .txt list of paths")
    if path.is_file() and path.suffix.lower() == ".txt":
        _expand_list(path, origin, lists, found)
    elif path.is_file():
        found.append(path)
    elif path.is_dir():
        _expand_folder(path, origin, found)
    else:
        raise ScoringError(f"{origin}{path}: not a regular file or folder (a device or pipe?); give media files")


def _expand_list(path: Path, origin: str, lists: tuple[Path, ...], found: list[Path]) -> None:
    resolved = path.resolve()
    if resolved in lists:
        chain = " -> ".join(str(p) for p in (*lists[lists.index(resolved) :], resolved))
        raise ScoringError(f"{origin}{path}: the .txt lists include each other in a cycle ({chain}); break the cycle")
    if len(lists) >= _MAX_LIST_DEPTH:
        raise ScoringError(f"{origin}{path}: .txt lists nested deeper than {_MAX_LIST_DEPTH}; flatten them")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ScoringError(f"{path}: line {line} is not UTF-8 text; a .txt list holds one path per line") from None
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
            _expand(target, f"{path} line {number}: ", (*lists, resolved), found)


def _expand_folder(path: Path, origin: str, found: list[Path]) -> None:
    entries = sorted(path.iterdir())
    for entry in entries:
        if entry.suffix.lower() in _MEDIA_SUFFIXES or entry.is_symlink():
            reason = _broken(entry)
            if reason is not None:
                raise ScoringError(f"{origin}{entry}: {reason}")
    ancestors = {path.resolve(), *path.resolve().parents}
    for entry in entries:
        if entry.is_dir() and entry.is_symlink() and entry.resolve() in ancestors:
            raise ScoringError(
                f"{origin}{entry}: a symlink cycle (links to {entry.resolve()}, which contains it); remove the link"
            )
    media = [p for p in entries if p.is_file() and p.suffix.lower() in _MEDIA_SUFFIXES]
    frame_folders = [p for p in entries if p.is_dir() and is_video(p)]
    if not media and not frame_folders:
        if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
            found.append(path)  # the folder itself is a clip of frames
            return
        raise ScoringError(
            f"{origin}{path}: folder holds no images or videos ({', '.join(sorted(IMAGE_SUFFIXES))}, "
            f"{', '.join(sorted(VIDEO_SUFFIXES))})"
        )
    found.extend(media + frame_folders)


@dataclass(frozen=True)
class ScoredItem:
    """One scored file: score (higher = better for this user), its standard deviation, and its rank (1 = best)."""

    path: Path
    score: float
    std: float
    rank: int


class TasteScorer:
    """Loads a personal taste model folder and scores media for its users.

    Args:
        model_dir: folder written by :func:`mmpref.vision.taste.model.save_taste_model`; user profiles live in
            ``<model_dir>/users/<user_id>.json``.
        cache_dir: embedding cache folder (default ``<model_dir>/cache``).
        encoder: the image encoder; default EfficientNet-Lite0 (must match the model's ``encoder_id``).
    """

    def __init__(
        self, model_dir: str | Path, cache_dir: str | Path | None = None, encoder: ImageEncoder | None = None
    ):
        self.model_dir = Path(model_dir)
        self.model, self.prior, self.config = load_taste_model(self.model_dir)
        self._encoder = encoder
        self.cache = EmbeddingCache(cache_dir or self.model_dir / "cache", self.config["encoder_id"])

    @property
    def encoder(self) -> ImageEncoder:
        """The image encoder, built on first use (a warm cache never needs it)."""
        from mmpref.vision.taste.features import checked_encoder

        wanted, where = self.config["encoder_id"], self.model_dir / "config.json"
        self._encoder = checked_encoder(self._encoder, wanted, where, ScoringError)
        return self._encoder

    def _compute(self, paths: list[Path | bytes]) -> np.ndarray:
        out = []
        for path in paths:
            if isinstance(path, bytes):  # an encoded image from a Parquet file
                out.append(self.encoder.embed_images([load_image(path, max_side=512)])[0])
            elif is_video(path):
                out.append(self.encoder.embed_images(load_video(path)).mean(0))
            else:
                out.append(self.encoder.embed_images([load_image(path, max_side=512)])[0])
        return np.stack(out)

    def embed(self, paths: Sequence[Path | bytes]) -> np.ndarray:
        """Embeddings of media files through the cache; an unreadable file raises :class:`MediaError` naming it."""
        return self.cache.embed(list(paths), self._compute)

    def profile_path(self, user_id: str) -> Path:
        """Where a user's profile lives."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user_id)
        return self.model_dir / "users" / f"{safe}.json"

    def profile(self, user_id: str | None) -> UserProfile:
        """A user's profile, or the population (prior mean and covariance) for ``None``."""
        if user_id is None:
            return UserProfile("population", self.prior.mean, self.prior.covariance, 0)
        path = self.profile_path(user_id)
        if not path.is_file():
            known = sorted(p.stem for p in (self.model_dir / "users").glob("*.json"))
            raise ScoringError(
                f"unknown user {user_id!r}: no profile at {path}; known users: {known or 'none'}; "
                "create one with `mmpref enroll`"
            )
        try:
            profile = UserProfile.load(path)
        except ValueError as err:  # not JSON, missing fields: the message names the file and the fix
            raise ScoringError(str(err)) from None
        rank = self.model.rank
        code, cov = np.asarray(profile.code), np.asarray(profile.covariance)
        if (
            code.shape != (rank,)
            or cov.shape != (rank, rank)
            or not (np.isfinite(code).all() and np.isfinite(cov).all())
        ):
            raise ScoringError(
                f"{path}: profile code {list(code.shape)} / covariance {list(cov.shape)} do not fit this model "
                f"(rank {rank}) or hold NaN/inf; re-create it with `mmpref enroll --model {self.model_dir} --user ...`"
            )
        return profile

    @torch.no_grad()
    def score(self, paths: Sequence[Path], user_id: str | None = None) -> list[ScoredItem]:
        """Score media for a user; returns items sorted best first, with the posterior std of each score."""
        profile = self.profile(user_id)
        emb = torch.from_numpy(self.embed(paths))
        code = torch.from_numpy(profile.code).float()
        scores = self.model.score(emb, code).numpy()
        # Var[s] = (Bᵀφ)ᵀ Σ (Bᵀφ): the posterior uncertainty of the user's code carried to each score.
        projected = (self.model.features(emb) @ self.model.basis).double().numpy()
        std = np.sqrt(np.einsum("nr,rs,ns->n", projected, profile.covariance, projected))
        order = np.argsort(-scores, kind="stable")
        return [ScoredItem(Path(paths[i]), float(scores[i]), float(std[i]), rank + 1) for rank, i in enumerate(order)]

    def enroll_from_records(self, user_id: str, records: Sequence) -> UserProfile:
        """Create (or replace) a user's profile from labelled pairs and/or ratings (:mod:`mmpref.data` records)."""
        from mmpref.data import PreferencePair, Rating

        pairs = [r for r in records if isinstance(r, PreferencePair)]
        ratings = [r for r in records if isinstance(r, Rating)]
        if not pairs and not ratings:
            raise ScoringError(
                f"no pairs or ratings to enroll {user_id!r} from; the labels file needs "
                '{"type": "pair", "a": ..., "b": ..., "label": ...} or {"type": "rating", ...} lines'
            )
        paths, index = [], {}
        for item in [p.a for p in pairs] + [p.b for p in pairs] + [r.item for r in ratings]:
            if not isinstance(item, (str, bytes)):
                raise ScoringError("enrollment labels must reference image or video files by path, or image bytes")
            index.setdefault(item, len(paths))
            if index[item] == len(paths):
                paths.append(item if isinstance(item, bytes) else Path(item))
        emb = torch.from_numpy(self.embed(paths))
        a = [index[p.a] for p in pairs]
        b = [index[p.b] for p in pairs]
        labels = [p.label for p in pairs]
        if ratings:
            rated = np.array([index[r.item] for r in ratings])
            i, j, lab = ratings_to_pairs(np.array([r.normalized for r in ratings]))
            a += rated[i].tolist()
            b += rated[j].tolist()
            labels += lab.tolist()
        profile = enroll(
            self.model, self.prior, emb[a], emb[b], torch.tensor(labels, dtype=torch.float32), user_id=user_id
        )
        profile.save(self.profile_path(user_id))
        return profile


def write_table(items: Sequence[ScoredItem], path: str | Path) -> Path:
    """Write scores as CSV or JSON (by suffix), atomically."""
    path = Path(path)
    rows = [
        {"rank": it.rank, "path": str(it.path), "score": round(it.score, 6), "std": round(it.std, 6)} for it in items
    ]
    if path.suffix.lower() == ".json":
        with atomic_write(path, "w") as handle:
            json.dump(rows, handle, indent=1)
    elif path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["rank", "path", "score", "std"])
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(path, "w") as handle:
            handle.write(buffer.getvalue())
    else:
        raise ScoringError(f"{path}: write tables as .csv or .json")
    return path


def format_table(items: Sequence[ScoredItem], limit: int | None = None) -> str:
    """A plain-text table for the terminal, best first."""
    shown = list(items)[:limit] if limit else list(items)
    width = max([len(str(it.path)) for it in shown] + [4])
    lines = [f"{'rank':>4}  {'score':>8}  {'± std':>7}  {'file':<{width}}"]
    lines += [f"{it.rank:>4}  {it.score:>8.3f}  {it.std:>7.3f}  {str(it.path):<{width}}" for it in shown]
    if limit and len(items) > limit:
        lines.append(f"... {len(items) - limit} more")
    return "\n".join(lines)


def contact_sheet(
    items: Sequence[ScoredItem], path: str | Path, columns: int = 6, thumb: int = 160, title: str = ""
) -> Path:
    """A PNG grid of thumbnails, best first, each labelled with rank, score ± std and file name."""
    rows = (len(items) + columns - 1) // columns
    header, label = 28 if title else 0, 34
    sheet = Image.new("RGB", (columns * thumb, header + rows * (thumb + label)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 8), title, fill="black")
    for n, item in enumerate(items):
        try:
            image = load_video(item.path, max_frames=1)[0] if is_video(item.path) else load_image(item.path, 512)
        except MediaError:
            image = Image.new("RGB", (thumb, thumb), "grey")
        image.thumbnail((thumb - 8, thumb - 8))
        x, y = (n % columns) * thumb, header + (n // columns) * (thumb + label)
        sheet.paste(image, (x + (thumb - image.width) // 2, y + 4))
        draw.text((x + 4, y + thumb), f"#{item.rank}  {item.score:+.2f} ± {item.std:.2f}", fill="black")
        draw.text((x + 4, y + thumb + 14), item.path.name[:24], fill="dimgray")
    with atomic_write(path, "wb") as handle:
        sheet.save(handle, format="PNG")
    return Path(path)
