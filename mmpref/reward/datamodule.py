"""Data modules that feed feature vectors to the reward system, as pair batches or list batches.

Batch layouts (what :class:`~mmpref.reward.system.RewardModelSystem` accepts):

* pairs: ``{"x_a": [B, D], "x_b": [B, D], "label": [B]}`` with label = P(a ≻ b);
* lists: ``{"x": [B, K, D], "targets": [B, K], "mask": [B, K]}`` with targets higher = better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmpref.data import DataError, PreferenceList, PreferencePair, read_jsonl_manifest
from mmpref.reward.synthetic import HiddenUtilityTask


class DictDataset(Dataset):
    """Rows of equally long tensors, returned as dicts (the default collate stacks them into a batch)."""

    def __init__(self, **tensors: torch.Tensor):
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors need the same length, got {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: t[index] for name, t in self.tensors.items()}


def pair_dataset(x_a: np.ndarray, x_b: np.ndarray, label: np.ndarray) -> DictDataset:
    """A pair dataset from arrays ``[N, D]``, ``[N, D]``, ``[N]``."""
    return DictDataset(
        x_a=torch.as_tensor(x_a, dtype=torch.float32),
        x_b=torch.as_tensor(x_b, dtype=torch.float32),
        label=torch.as_tensor(label, dtype=torch.float32),
    )


def list_dataset(x: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> DictDataset:
    """A list dataset from arrays ``[N, K, D]``, ``[N, K]`` and an optional mask ``[N, K]``."""
    mask = np.ones(targets.shape, dtype=bool) if mask is None else mask
    return DictDataset(
        x=torch.as_tensor(x, dtype=torch.float32),
        targets=torch.as_tensor(targets, dtype=torch.float32),
        mask=torch.as_tensor(mask, dtype=torch.bool),
    )


class _LoaderMixin(L.LightningDataModule):
    """Shared loaders; subclasses fill ``self.train_set``, ``self.val_set``, ``self.test_set`` in ``setup``."""

    batch_size: int
    shuffle: bool
    shuffle_seed: int = 0
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled (if asked) by one seeded permutation per epoch that every process shares.

        The sampler is a ``DistributedSampler`` at every world size, also on one process: the epoch's permutation
        then depends only on (seed, epoch), and under DDP with N processes the union of the processes' k-th batches
        is exactly the single-process k-th batch of N × ``batch_size``. Training with the same global batch thus
        sees the same data in the same order at any process count (Lightning's own sampler would reshuffle
        differently per world size, and always shuffles under DDP).
        """
        trainer = self.trainer  # None when the data module is used outside a Trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(
            self.train_set, num_replicas=world, rank=rank, shuffle=self.shuffle, seed=self.shuffle_seed
        )
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (none if there is no validation set)."""
        return DataLoader(self.val_set, batch_size=self.batch_size) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader | list:
        """Test batches (none if there is no test set)."""
        return DataLoader(self.test_set, batch_size=self.batch_size) if self.test_set is not None else []


class SyntheticPreferenceDataModule(_LoaderMixin):
    """Preferences from a hidden linear utility (:class:`HiddenUtilityTask`), with a known right answer.

    Train: noisy BT pairs or noisy Plackett-Luce lists. Validation: noisy pairs (accuracy there is bounded by the
    noise ceiling; calibration is measured against these noisy labels). Test: pairs labelled by the hidden
    utility's order itself, so ``test/accuracy`` is the agreement with the true order.

    Args:
        num_features: feature size D.
        kind: train on ``"pairs"`` or on ranked ``"lists"``.
        num_train: number of training pairs, or lists.
        num_val: number of validation pairs.
        num_test: number of test pairs.
        list_size: items per list K when ``kind="lists"``.
        utility_scale: ‖w‖ of the hidden utility; larger = less noisy labels.
        batch_size: records per batch (per process under DDP).
        shuffle: shuffle the training set each epoch.
        seed: seed of the data; the same seed gives the same data in every process.
    """

    def __init__(
        self,
        num_features: int = 16,
        kind: Literal["pairs", "lists"] = "pairs",
        num_train: int = 4000,
        num_val: int = 1000,
        num_test: int = 2000,
        list_size: int = 8,
        utility_scale: float = 3.0,
        batch_size: int = 128,
        shuffle: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if kind not in ("pairs", "lists"):
            raise ValueError(f"kind must be 'pairs' or 'lists', got {kind!r}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shuffle_seed = seed
        self.noise_ceiling: float | None = None

    def setup(self, stage: str | None = None) -> None:
        """Draw the data (once; every process draws the same data from the same seed)."""
        if self.train_set is not None:
            return
        hp = self.hparams
        task = HiddenUtilityTask(hp.num_features, hp.utility_scale, hp.seed)
        if hp.kind == "pairs":
            train = task.pairs(hp.num_train)
            self.train_set = pair_dataset(train.x_a, train.x_b, train.label)
        else:
            lists = task.lists(hp.num_train, hp.list_size)
            self.train_set = list_dataset(lists.x, lists.targets)
        val = task.pairs(hp.num_val, noisy=True)
        self.noise_ceiling = task.noise_ceiling(val)
        self.val_set = pair_dataset(val.x_a, val.x_b, val.label)
        test = task.pairs(hp.num_test, noisy=False)
        self.test_set = pair_dataset(test.x_a, test.x_b, test.label)
        self.task = task


def _items_of(record: PreferencePair | PreferenceList) -> tuple:
    return (record.a, record.b) if isinstance(record, PreferencePair) else record.items


def _records_to_dataset(records: list, path: Path) -> DictDataset:
    """Turn feature-vector pairs (or lists) from a manifest into a dataset; one kind per file."""
    pairs = [r for r in records if isinstance(r, PreferencePair)]
    lists = [r for r in records if isinstance(r, PreferenceList)]
    if not records:
        raise DataError(path, ["the manifest holds no records; add pairs or lists"])
    if len(pairs) + len(lists) != len(records) or (pairs and lists):
        raise DataError(
            path,
            [
                "a feature manifest must hold only pairs or only lists (ratings are not supported "
                "by this data module); split the file by type"
            ],
        )
    items = [i for r in records for i in _items_of(r)]
    bad = next((r.id for r in records for i in _items_of(r) if not isinstance(i, np.ndarray)), None)
    if bad is not None:
        raise DataError(
            path,
            [
                f"record {bad!r}: items must be inline feature vectors (lists of numbers) for "
                "this data module; encode images to features first"
            ],
        )
    sizes = {i.shape for i in items}
    if len(sizes) != 1:
        raise DataError(path, [f"feature vectors have different shapes {sorted(sizes)}; use one feature size"])
    if pairs:
        return pair_dataset(
            np.stack([p.a for p in pairs]),
            np.stack([p.b for p in pairs]),
            np.array([p.label for p in pairs], dtype=np.float32),
        )
    k = max(len(r.items) for r in lists)
    dim = items[0].shape[0]
    x = np.zeros((len(lists), k, dim), np.float32)
    targets = np.zeros((len(lists), k), np.float32)
    mask = np.zeros((len(lists), k), bool)
    for row, record in enumerate(lists):
        n = len(record.items)
        x[row, :n] = np.stack(record.items)
        targets[row, :n] = record.scores
        mask[row, :n] = True
    return list_dataset(x, targets, mask)


class ManifestFeatureDataModule(_LoaderMixin):
    """Pairs or ranked lists of feature vectors read from JSONL manifests (see :mod:`mmpref.data.io`).

    Args:
        train: training manifest.
        val: validation manifest (optional).
        test: test manifest (optional).
        batch_size: records per batch.
        shuffle: shuffle the training set each epoch.
        media_root: folder(s) media paths in the manifests may resolve into (default: each manifest's folder),
            as ``read_jsonl_manifest(media_root=)`` (in a recipe: ``data.init_args.media_root``).
    """

    def __init__(
        self,
        train: str | Path,
        val: str | Path | None = None,
        test: str | Path | None = None,
        batch_size: int = 128,
        shuffle: bool = True,
        media_root: str | list[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.shuffle = shuffle

    def setup(self, stage: str | None = None) -> None:
        """Read and validate the manifests (once)."""
        if self.train_set is not None:
            return
        for split in ("train", "val", "test"):
            path = self.hparams[split]
            if path is not None:
                records = read_jsonl_manifest(path, media_root=self.hparams.media_root)
                setattr(self, f"{split}_set", _records_to_dataset(records, Path(path)))
