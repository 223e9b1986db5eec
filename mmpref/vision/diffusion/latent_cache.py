"""A one-off on-disk cache of VAE latents and text embeddings, and the training data read back from it.

Layout (one namespace per model fingerprint, resolution, resize policy and dtype, so a different VAE, text encoder or
crop never reads stale entries)::

    <cache_dir>/<family>-<fingerprint>-r<R>-<resize>-<dtype>/shard-00000.safetensors, shard-00001..., info.json

Each shard holds up to ``shard_size`` pairs: ``keys`` ``[n,16]`` (uint8 content keys,
:func:`~mmpref.vision.diffusion.data.pair_key`), ``x_w``/``x_l`` latents ``[n,C,h,w]``, ``micro_w``/``micro_l``
``[n,4]`` (source size and crop, SDXL's micro-conditioning) and ``cond.<name>`` text tensors. Building streams the
Parquet file, skips pairs already cached (by key, whatever file they came from), encodes the rest in batches and
writes each shard atomically; an interrupted build keeps its finished shards. Training reads one shard at a time
(:class:`CachedPairs`), so memory is flat in the number of pairs.

The VAE posterior draw and a ``random`` crop are made once per pair (seeded by its key) when it is cached, not
re-drawn each epoch: that is the price of never running the VAE again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmpref.data.io import DataError, atomic_write
from mmpref.vision.diffusion.data import DPOTiePolicy, RawPair, ResizePolicy, iter_pickapic, prepare_image

logger = logging.getLogger(__name__)
CacheDtype = Literal["float32", "float16", "bfloat16"]


@dataclass
class CacheReport:
    """What a cache build did: pairs in the file, newly encoded, found cached, wall and CPU seconds, the folder."""

    folder: Path
    pairs: int = 0
    encoded: int = 0
    reused: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    keys: list[bytes] = field(default_factory=list, repr=False)


def cache_namespace(cache_dir: str | Path, family: Any, fingerprint: str, resize: ResizePolicy, dtype: str) -> Path:
    """The folder of one (model, resolution, resize policy, dtype) combination inside ``cache_dir``."""
    return Path(cache_dir) / f"{family.name}-{fingerprint}-r{family.resolution}-{resize}-{dtype}"


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.safetensors"))


def cached_keys(folder: Path) -> set[bytes]:
    """Every pair key already in the namespace (reads only the ``keys`` tensor of each shard)."""
    from safetensors import safe_open

    keys: set[bytes] = set()
    for shard in _shards(folder):
        with safe_open(str(shard), "pt") as handle:
            keys.update(bytes(k) for k in handle.get_tensor("keys").numpy())
    return keys


def build_cache(
    family: Any,
    pairs_path: str | Path,
    folder: str | Path,
    *,
    ties: DPOTiePolicy,
    resize: ResizePolicy,
    dtype: CacheDtype = "float32",
    encode_batch: int = 8,
    shard_size: int = 1024,
    seed: int = 0,
) -> CacheReport:
    """Encode every pair of ``pairs_path`` not yet in ``folder`` (a :func:`cache_namespace`) and write shards.

    Raises:
        DataError: bad rows of the file (all named, after the good ones were cached) or images that cannot be used.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    report = CacheReport(folder)
    known = cached_keys(folder)
    next_shard = len(_shards(folder))
    pending: list[dict[str, Any]] = []
    todo: list[RawPair] = []
    problems: list[str] = []
    torch_dtype = getattr(torch, dtype)

    def encode(chunk: list[RawPair]) -> None:
        pixels, micros, keep = [], [], []
        for pair in chunk:
            rng = np.random.default_rng(int.from_bytes(pair.key[:8], "little") ^ seed)
            images = [prepare_image(data, family.resolution, resize, rng) for data in (pair.winner, pair.loser)]
            bad = [(name, why) for name, (px, why) in zip(("winner", "loser"), images, strict=True) if px is None]
            if bad:
                problems.extend(f"row {pair.row}: {name} image {why}" for name, why in bad)
                continue
            pixels += [images[0][0], images[1][0]]
            micros += [images[0][1], images[1][1]]
            keep.append(pair)
        if not keep:
            return
        generator = torch.Generator().manual_seed(int.from_bytes(keep[0].key[:8], "little") ^ seed)
        latents = family.encode_images(torch.stack(pixels), generator).to(torch_dtype).cpu()
        cond = {k: v.to(torch_dtype).cpu() for k, v in family.encode_prompts([p.caption for p in keep]).items()}
        micro = torch.tensor(micros, dtype=torch.float32)
        for i, pair in enumerate(keep):
            entry = {"keys": torch.tensor(list(pair.key), dtype=torch.uint8), "x_w": latents[2 * i]}
            entry |= {"x_l": latents[2 * i + 1], "micro_w": micro[2 * i], "micro_l": micro[2 * i + 1]}
            entry |= {f"cond.{k}": v[i] for k, v in cond.items()}
            pending.append(entry)
        report.encoded += len(keep)

    def flush(final: bool = False) -> None:
        nonlocal next_shard, pending
        while len(pending) >= shard_size or (final and pending):
            chunk, pending = pending[:shard_size], pending[shard_size:]
            tensors = {k: torch.stack([e[k] for e in chunk]).contiguous() for k in chunk[0]}
            with atomic_write(folder / f"shard-{next_shard:05d}.safetensors") as handle:
                handle.write(save(tensors))
            next_shard += 1

    try:
        for pair in iter_pickapic(pairs_path, ties):
            report.pairs += 1
            report.keys.append(pair.key)
            if pair.key in known:
                report.reused += 1
                continue
            known.add(pair.key)  # a duplicate pair later in the file is encoded once
            todo.append(pair)
            if len(todo) >= encode_batch:
                encode(todo)
                todo = []
                flush()
    except DataError as err:
        problems = err.problems + problems
    if todo:
        encode(todo)
    flush(final=True)
    if problems:
        raise DataError(pairs_path, problems)
    report.seconds = round(time.perf_counter() - start, 2)
    report.cpu_seconds = round(time.process_time() - cpu_start, 2)  # this process's CPU: comparable on a loaded box
    with atomic_write(folder / "info.json", "w") as handle:
        json.dump({"family": family.name, "resolution": family.resolution, "resize": resize, "dtype": dtype}, handle)
    logger.info(
        "cache %s: %d pairs, %d encoded, %d reused, %.1f s",
        folder,
        report.pairs,
        report.encoded,
        report.reused,
        report.seconds,
    )
    return report


class CachedPairs(IterableDataset):
    """Pairs read back from a cache namespace, one shard in memory at a time; shuffled by shard and within shards.

    Args:
        folder: the namespace folder.
        keys: the pairs of this run (a Parquet file's keys); ``None`` = every cached pair.
        seed: shuffling seed; epoch ``e`` uses ``seed + e`` (the epoch advances each time the data is iterated).
        shuffle: shuffle shard order and rows within each shard.
        rank: this process's rank, and ``world_size`` the number of processes: shards are dealt round-robin.
    """

    def __init__(
        self,
        folder: str | Path,
        keys: list[bytes] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.folder = Path(folder)
        self.shards = _shards(self.folder)
        if not self.shards:
            raise DataError(self.folder, ["the cache holds no shard; build it first (mmpref dpo-cache)"])
        self.keys = None if keys is None else set(keys)
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.epoch = 0
        self._length = self._count()

    def _count(self) -> int:
        from safetensors import safe_open

        total = 0
        for shard in self.shards[self.rank :: self.world_size]:
            with safe_open(str(shard), "pt") as handle:
                keys = handle.get_tensor("keys").numpy()
            total += len(keys) if self.keys is None else sum(bytes(k) in self.keys for k in keys)
        return total

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from safetensors.torch import load

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        shards = self.shards[self.rank :: self.world_size]
        worker = get_worker_info()
        if worker is not None:  # DataLoader workers split this rank's shards again
            shards = shards[worker.id :: worker.num_workers]
        order = torch.randperm(len(shards), generator=generator).tolist() if self.shuffle else range(len(shards))
        for s in order:
            tensors = load(shards[s].read_bytes())  # one shard in memory, read with plain I/O (no growing mmap)
            n = len(tensors["keys"])
            rows = torch.randperm(n, generator=generator).tolist() if self.shuffle else range(n)
            names = [k for k in tensors if k.startswith("cond.")]
            for i in rows:
                if self.keys is not None and bytes(tensors["keys"][i].numpy()) not in self.keys:
                    continue
                yield {
                    "x_w": tensors["x_w"][i].float(),
                    "x_l": tensors["x_l"][i].float(),
                    "micro_w": tensors["micro_w"][i],
                    "micro_l": tensors["micro_l"][i],
                    "cond": {k[5:]: tensors[k][i].float() for k in names},
                }


class CachedPairsData(L.LightningDataModule):
    """The training loader over :class:`CachedPairs`, built per process so each rank reads its own shards.

    Args:
        folder: the cache namespace folder.
        keys: the pairs of this run (``None`` = every cached pair).
        batch_size: pairs per batch.
        seed: shuffling seed.
        workers: DataLoader worker processes.
    """

    def __init__(self, folder: str | Path, keys: list[bytes] | None, batch_size: int, seed: int = 0, workers: int = 0):
        super().__init__()
        self.folder, self.keys, self.batch_size, self.seed, self.workers = folder, keys, batch_size, seed, workers

    def train_dataloader(self) -> DataLoader:
        """Batches of cached pairs; with several processes, shards are dealt round-robin between ranks."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        data = CachedPairs(self.folder, self.keys, seed=self.seed, rank=rank, world_size=world)
        return DataLoader(data, batch_size=self.batch_size, num_workers=self.workers)
