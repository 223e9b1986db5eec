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

Several processes (DDP) share one global order per epoch and cut each global batch of ``W·b`` pairs into W equal,
disjoint parts, padding the epoch's last global batch by wrapping around, so every rank runs the same number of
batches; each pair carries a noise seed fixed by its place in that order. A run on W ranks with batch b is then the
run of one process with batch W·b, and a resumed run continues at the exact batch, with the same noise, that the
interrupted one would have read next (:func:`resume_point`, :class:`PairsLoader`).

The VAE posterior draw and a ``random`` crop are made once per pair (seeded by its key) when it is cached, not
re-drawn each epoch: that is the price of never running the VAE again.
"""

from __future__ import annotations

import hashlib
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


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The noise/timestep seed of the pair at ``position`` of epoch ``epoch``'s global order (63 bits).

    It depends on the position in the global order, not on the rank or worker that reads it, so a run on W processes
    draws the same ε and t for every pair as one process with the same global batch.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def global_batch_positions(total: int, batch_size: int, world_size: int, rank: int) -> np.ndarray:
    """Positions ``[M, b]`` in an epoch's global order of this rank's M local batches.

    Global batch g holds positions ``g·W·b … (g+1)·W·b − 1``; rank r takes the r-th run of b of them, so the ranks
    see disjoint parts of every global batch. Every epoch has M = ⌈total / (W·b)⌉ global batches; the last one is
    filled by wrapping around to the start of the order (as ``DistributedSampler`` pads), so every rank runs exactly
    M batches and no rank runs out early. Position p reads pair ``p mod total``.
    """
    if total < 1:
        raise ValueError("an epoch needs at least one pair")
    per_global = batch_size * world_size
    batches = -(-total // per_global)
    steps = np.arange(batches)[:, None] * per_global + rank * batch_size
    return steps + np.arange(batch_size)[None, :]


class CachedPairs(IterableDataset):
    """Pairs read back from a cache namespace, one shard in memory at a time, split evenly between processes.

    Each epoch has one **global order** of the run's pairs (shards shuffled, then rows within each shard, seeded by
    ``seed + epoch``), cut into global batches of ``world_size × batch_size``; rank r reads its share of each
    (:func:`global_batch_positions`) and DataLoader worker w of n reads local batches ``k ≡ w (mod n)``, which the
    DataLoader hands out in order. Every pair carries ``seed`` (:func:`item_seed`), from which the system draws its
    noise and timestep, so the result depends on the global batch only, not on how many processes share it.

    Args:
        folder: the namespace folder.
        keys: the pairs of this run (a Parquet file's keys); ``None`` = every cached pair.
        seed: shuffling and noise seed.
        shuffle: shuffle shard order and rows within each shard.
        rank: this process's rank, and ``world_size`` the number of processes.
        batch_size: pairs per local batch.

    Attributes:
        epoch: the epoch the next pass reads; ``start``: the local batch it starts at (set by :class:`PairsLoader`;
            each pass then moves on to the next epoch from its start).
    """

    def __init__(
        self,
        folder: str | Path,
        keys: list[bytes] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
    ):
        super().__init__()
        from safetensors import safe_open

        self.folder = Path(folder)
        self.shards = _shards(self.folder)
        if not self.shards:
            raise DataError(self.folder, ["the cache holds no shard; build it first (mmpref dpo-cache)"])
        wanted = None if keys is None else set(keys)
        self.kept: list[np.ndarray] = []  # per shard: which rows belong to this run
        for shard in self.shards:
            with safe_open(str(shard), "pt") as handle:
                shard_keys = handle.get_tensor("keys").numpy()
            self.kept.append(np.array([wanted is None or bytes(k) in wanted for k in shard_keys], dtype=bool))
        self.total = int(sum(k.sum() for k in self.kept))
        if not self.total:
            raise DataError(self.folder, ["none of this run's pairs is in the cache; build it (mmpref dpo-cache)"])
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.batch_size = batch_size
        self.positions = global_batch_positions(self.total, batch_size, world_size, rank)
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.positions.size

    def layout(self) -> dict[str, int]:
        """What the data order depends on (a resumed run must match it to continue at the same pair)."""
        return {"pairs": self.total, "batch_size": self.batch_size, "world_size": self.world_size, "seed": self.seed}

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s global order: (shard index, row in shard) of each of the run's pairs."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        count = len(self.shards)
        shard_order = torch.randperm(count, generator=generator).tolist() if self.shuffle else range(count)
        shards, rows = [], []
        for s in shard_order:
            n = len(self.kept[s])
            perm = torch.randperm(n, generator=generator).numpy() if self.shuffle else np.arange(n)
            perm = perm[self.kept[s][perm]]
            shards.append(np.full(len(perm), s))
            rows.append(perm)
        return np.concatenate(shards), np.concatenate(rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from safetensors.torch import load

        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0  # iterated directly (no PairsLoader), the next pass is the next epoch
        shard_of, row_of = self.order(epoch)
        local = range(start, len(self.positions))
        worker = get_worker_info()
        if worker is not None:  # worker w of n: local batches k ≡ w (mod n), the order the DataLoader returns them in
            local = local[worker.id :: worker.num_workers]
        loaded, tensors = -1, {}
        for k in local:
            for position in self.positions[k].tolist():
                s, i = int(shard_of[position % self.total]), int(row_of[position % self.total])
                if s != loaded:  # positions ascend, so each shard is loaded once (plus once for the wrap-around)
                    tensors, loaded = load(self.shards[s].read_bytes()), s  # plain I/O, no growing mmap
                yield {
                    "x_w": tensors["x_w"][i].float(),
                    "x_l": tensors["x_l"][i].float(),
                    "micro_w": tensors["micro_w"][i],
                    "micro_l": tensors["micro_l"][i],
                    "cond": {k[5:]: tensors[k][i].float() for k in tensors if k.startswith("cond.")},
                    "seed": torch.tensor(item_seed(self.seed, epoch, position)),
                }


class PairsLoader(DataLoader):
    """A DataLoader over :class:`CachedPairs` that sets the epoch and first batch of each pass (exact resume).

    Lightning calls ``iter()`` once per epoch; pass e after the first reads epoch ``epoch + e`` from its start. The
    first pass starts at local batch ``start``: where an interrupted run stopped. ``state_dict`` makes Lightning
    treat the loader as resumable and records the data layout, which a resumed run checks.
    """

    def __init__(self, dataset: CachedPairs, epoch: int = 0, start: int = 0, workers: int = 0):
        super().__init__(dataset, batch_size=dataset.batch_size, num_workers=workers)
        self.next_epoch, self.next_start = epoch, start

    def __iter__(self) -> Any:
        self.epoch = self.dataset.epoch = self.next_epoch
        self.dataset.start = self.next_start
        self.next_epoch, self.next_start = self.next_epoch + 1, 0
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The data layout and epoch (the position itself follows from the restored global step)."""
        return {"epoch": getattr(self, "epoch", self.next_epoch), **self.dataset.layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Warn when the resumed run's data layout differs: it then continues at a different pair."""
        changed = {k: (state.get(k), v) for k, v in self.dataset.layout().items() if state.get(k) != v}
        if changed:
            logger.warning("resume is not exact: the data layout changed since the checkpoint (was, now): %s", changed)


def resume_point(global_step: int, batches: int, accumulate: int) -> tuple[int, int]:
    """(epoch, local batch) where a run that has made ``global_step`` optimizer steps continues.

    Lightning steps the optimizer every ``accumulate`` batches and once more at the end of an epoch, so an epoch of
    M batches makes ⌈M / accumulate⌉ steps.
    """
    per_epoch = -(-batches // accumulate)
    return global_step // per_epoch, (global_step % per_epoch) * accumulate


class CachedPairsData(L.LightningDataModule):
    """The training loader over :class:`CachedPairs`, built per process so each rank reads its share.

    Args:
        folder: the cache namespace folder.
        keys: the pairs of this run (``None`` = every cached pair).
        batch_size: pairs per batch (per process).
        seed: shuffling and noise seed.
        workers: DataLoader worker processes.
        accumulate: micro-batches per optimizer step (to find the batch a resumed run continues at).
    """

    def __init__(
        self,
        folder: str | Path,
        keys: list[bytes] | None,
        batch_size: int,
        seed: int = 0,
        workers: int = 0,
        accumulate: int = 1,
    ):
        super().__init__()
        self.folder, self.keys, self.batch_size, self.seed, self.workers = folder, keys, batch_size, seed, workers
        self.accumulate = accumulate

    def train_dataloader(self) -> DataLoader:
        """Batches of cached pairs; a resumed run (global step > 0) starts at the batch where it stopped."""
        trainer = self.trainer
        rank, world, step = (trainer.global_rank, trainer.world_size, trainer.global_step) if trainer else (0, 1, 0)
        data = CachedPairs(
            self.folder, self.keys, seed=self.seed, rank=rank, world_size=world, batch_size=self.batch_size
        )
        epoch, start = resume_point(step, len(data) // self.batch_size, self.accumulate)
        return PairsLoader(data, epoch, start, self.workers)
