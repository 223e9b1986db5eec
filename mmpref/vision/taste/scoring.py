"""Scoring images and videos for a person (or the population): embeddings through the cache, then the taste model.

Videos are scored by their frame-mean embedding (the personal model is trained on images); the learned temporal
head for motion-dependent preferences belongs to the unified reward model.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmpref.data.io import atomic_write
from mmpref.vision.cache import EmbeddingCache
from mmpref.vision.encoders import EfficientNetLite0Encoder, ImageEncoder
from mmpref.vision.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, MediaError, is_video, load_image, load_video
from mmpref.vision.taste.model import UserProfile, enroll, load_taste_model, ratings_to_pairs


class ScoringError(ValueError):
    """Bad input to scoring or enrollment: the message names what and how to fix it."""


def collect_media(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (images, videos and frame folders inside) and ``.txt`` lists into media paths.

    Raises:
        ScoringError: for a missing input or when nothing to score is found.
    """
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise ScoringError(f"{path}: not found; give image/video files, folders or a .txt list of paths")
        if path.is_file() and path.suffix.lower() == ".txt":
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            found += collect_media([Path(line) if Path(line).is_absolute() else path.parent / line for line in lines])
        elif path.is_file():
            found.append(path)
        else:
            entries = sorted(path.iterdir())
            media = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            frame_folders = [p for p in entries if p.is_dir() and is_video(p)]
            if not media and not frame_folders:
                if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
                    found.append(path)  # the folder itself is a clip of frames
                    continue
                raise ScoringError(
                    f"{path}: folder holds no images or videos ({', '.join(sorted(IMAGE_SUFFIXES))}, "
                    f"{', '.join(sorted(VIDEO_SUFFIXES))})"
                )
            found += media + frame_folders
    if not found:
        raise ScoringError("nothing to score: give at least one image, video or folder")
    return found


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
        if self._encoder is None:
            self._encoder = EfficientNetLite0Encoder()
        if self._encoder.encoder_id != self.config["encoder_id"]:
            raise ScoringError(
                f"{self.model_dir}: model was trained on {self.config['encoder_id']!r} embeddings "
                f"but the encoder is {self._encoder.encoder_id!r}"
            )
        return self._encoder

    def _compute(self, paths: list[Path]) -> np.ndarray:
        out = []
        for path in paths:
            if is_video(path):
                out.append(self.encoder.embed_images(load_video(path)).mean(0))
            else:
                out.append(self.encoder.embed_images([load_image(path, max_side=512)])[0])
        return np.stack(out)

    def embed(self, paths: Sequence[Path]) -> np.ndarray:
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
        return UserProfile.load(path)

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
            if not isinstance(item, str):
                raise ScoringError("enrollment labels must reference image or video files by path")
            index.setdefault(item, len(paths))
            if index[item] == len(paths):
                paths.append(Path(item))
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
