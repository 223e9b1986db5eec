"""An on-disk embedding cache keyed by file content, so re-scoring a folder costs no encoder time.

Layout: ``<root>/<encoder_id>/<sha256[:2]>/<sha256>.npy``. The key is the SHA-256 of the file's bytes (a renamed
or moved file is still a hit; an edited one is a miss) and the encoder id (other weights never collide). Entries
are written atomically, so a crash mid-write leaves no half entry, and concurrent writers of the same entry are
harmless (same content).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmpref.data.io import atomic_write


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a frame folder's sorted (name, bytes) pairs."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class EmbeddingCache:
    """Cache of embeddings per (encoder, file content).

    Args:
        root: folder of the cache.
        encoder_id: the encoder's identity (weights and preprocessing), e.g. ``encoder.encoder_id``.
    """

    def __init__(self, root: str | Path, encoder_id: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", encoder_id)
        self.folder = Path(root) / safe
        self.hits = 0
        self.misses = 0

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached embedding for a content hash, or ``None``; an unreadable entry counts as missing."""
        entry = self._entry(key)
        if not entry.is_file():
            return None
        try:
            return np.load(entry, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, key: str, embedding: np.ndarray) -> None:
        """Store one embedding atomically."""
        with atomic_write(self._entry(key), "wb") as handle:
            np.save(handle, np.asarray(embedding, dtype=np.float32), allow_pickle=False)

    def embed(self, paths: Sequence[str | Path | bytes], compute: Callable[[list], np.ndarray]) -> np.ndarray:
        """Embeddings for ``paths`` in order: cached ones are read, the rest computed in one call and stored.

        Args:
            paths: files (or frame folders) to embed, or encoded images as bytes (keyed by their SHA-256).
            compute: maps the missing items (``Path`` objects, or the bytes as given) to their embeddings
                ``[M, ...]``, in the same order.
        """
        keys = [hashlib.sha256(p).hexdigest() if isinstance(p, bytes) else content_hash(p) for p in paths]
        found: dict[int, np.ndarray] = {}
        missing: list[int] = []
        for index, key in enumerate(keys):
            cached = self.get(key)
            if cached is None:
                missing.append(index)
            else:
                found[index] = cached
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            computed = compute([paths[i] if isinstance(paths[i], bytes) else Path(paths[i]) for i in missing])
            for index, embedding in zip(missing, computed, strict=True):
                self.put(keys[index], embedding)
                found[index] = np.asarray(embedding, np.float32)
        return np.stack([found[i] for i in range(len(paths))]) if paths else np.zeros((0,), np.float32)
