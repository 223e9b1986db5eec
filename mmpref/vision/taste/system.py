"""Training the personal taste model on many users' pairs and ratings, and the default simulated-rater data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, DistributedSampler

from mmpref.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES, ListwiseLossName, PairwiseLossName, soft_pairwise
from mmpref.reward.datamodule import DictDataset
from mmpref.reward.metrics import PairwiseCalibrationError, pairwise_accuracy
from mmpref.vision.demo_data import SimulatedPopulation, UserPairs, load_demo_items
from mmpref.vision.taste.model import PersonalTasteModel

Batch = dict[str, torch.Tensor]


class PersonalTasteSystem(L.LightningModule):
    """Joint training on pairs (a pairwise loss) and ratings (a listwise loss over each user's rated items).

    Loss = mean pairwise loss + ``rating_weight`` · mean listwise loss + ``code_weight`` · mean ‖z_u‖², the last
    being the Gaussian prior on user codes that enrollment later assumes. Logs ``{stage}/loss``,
    ``{stage}/accuracy``, ``{stage}/ece`` for training users' held-out pairs, and
    ``{stage}/personal/population_accuracy`` (the same pairs scored by the population head, z = 0).

    Args:
        model: the personal taste model.
        pair_loss: pairwise loss of the core for pairs.
        list_loss: listwise loss of the core for ratings (ratings tie often: ListNet is tie-invariant).
        beta: inverse temperature of both losses.
        rating_weight: weight of the ratings term.
        code_weight: weight of the user-code prior.
        optimizer: optimiser factory.
    """

    def __init__(
        self,
        model: PersonalTasteModel,
        pair_loss: PairwiseLossName = "bradley_terry",
        list_loss: ListwiseLossName = "listnet",
        beta: float = 1.0,
        rating_weight: float = 0.5,
        code_weight: float = 0.01,
        optimizer: OptimizerCallable = torch.optim.AdamW,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model
        self.pair_loss_fn = PAIRWISE_LOSSES[pair_loss]
        self.list_loss_fn = LISTWISE_LOSSES[list_loss]
        self.optimizer_factory = optimizer
        self.val_ece = PairwiseCalibrationError()

    def forward(self, embeddings: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of items ``[..., D]`` for training users (or the population when ``users`` is None)."""
        return self.model(embeddings, users)

    def setup(self, stage: str) -> None:
        """Size the model's code table from the data module's user count (``num_users``), or check a given one."""
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        count = getattr(data, "num_users", None)
        if count is not None:
            self.model.size_user_table(int(count))

    def _pair_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        users = batch["user"]
        score_a, score_b = self.model(batch["emb_a"], users), self.model(batch["emb_b"], users)
        loss = soft_pairwise(self.pair_loss_fn, score_a, score_b, batch["label"], beta=self.hparams.beta).mean()
        return loss, torch.sigmoid(self.hparams.beta * (score_a - score_b)), users

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> torch.Tensor:
        """Pairs and/or rating lists of training users, with the code prior."""
        loss, used_users = 0.0, []
        if "pairs" in batch:
            pair_loss, prob, users = self._pair_terms(batch["pairs"])
            loss = loss + pair_loss
            used_users.append(users)
            size = len(users)
            self.log("train/personal/pair_loss", pair_loss, batch_size=size)
            self.log(
                "train/accuracy", pairwise_accuracy(prob.detach(), batch["pairs"]["label"]).mean(), batch_size=size
            )
        if "ratings" in batch:
            ratings = batch["ratings"]
            list_scores = self.model(ratings["emb"], ratings["user"][:, None])
            list_loss = self.list_loss_fn(list_scores, ratings["targets"], ratings["mask"], beta=self.hparams.beta)
            loss = loss + self.hparams.rating_weight * list_loss.mean()
            used_users.append(ratings["user"])
            self.log("train/personal/rating_loss", list_loss.mean(), batch_size=len(ratings["user"]))
        codes = self.model.user_codes(torch.cat(used_users))
        loss = loss + self.hparams.code_weight * codes.pow(2).sum(-1).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(codes))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Held-out pairs of training users: personal and population accuracy, calibration."""
        loss, prob, _ = self._pair_terms(batch)
        population = torch.sigmoid(self.hparams.beta * (self.model(batch["emb_a"]) - self.model(batch["emb_b"])))
        size = len(prob)
        self.val_ece.update(prob, batch["label"])
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        self.log(
            "val/accuracy",
            pairwise_accuracy(prob, batch["label"]).mean(),
            prog_bar=True,
            batch_size=size,
            sync_dist=True,
        )
        self.log(
            "val/personal/population_accuracy",
            pairwise_accuracy(population, batch["label"]).mean(),
            batch_size=size,
            sync_dist=True,
        )
        self.log("val/ece", self.val_ece, on_epoch=True, batch_size=size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The injected optimiser over all parameters."""
        return self.optimizer_factory(self.parameters())


class _TasteDataModule(L.LightningDataModule):
    """Shared batching for personal-taste data: datasets of item indices, embeddings gathered per batch.

    Subclasses set ``self.embeddings`` ``[N, D]``, ``self.train_pairs`` / ``self.val_pairs`` (DictDatasets of
    ``user``, ``a``, ``b``, ``label``) and ``self.rating_lists`` (``user``, ``items`` ``[K]``, ``targets`` ``[K]``,
    optional ``mask`` ``[K]``), and ``hparams.batch_size`` / ``hparams.seed``.
    """

    embeddings: torch.Tensor | None = None

    @property
    def num_users(self) -> int | None:
        """Training users (1 + the largest user index in the pairs and rating lists); ``None`` before setup."""
        sets = [getattr(self, name, None) for name in ("train_pairs", "val_pairs", "rating_lists")]
        users = [s.tensors["user"] for s in sets if s is not None and "user" in s.tensors and len(s.tensors["user"])]
        if self.embeddings is None or not users:
            return None
        return int(max(int(u.max()) for u in users)) + 1

    def _collate_pairs(self, rows: list[dict[str, torch.Tensor]]) -> Batch:
        batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        return {
            "user": batch["user"],
            "emb_a": self.embeddings[batch["a"]],
            "emb_b": self.embeddings[batch["b"]],
            "label": batch["label"],
        }

    def _collate_lists(self, rows: list[dict[str, torch.Tensor]]) -> Batch:
        batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        return {
            "user": batch["user"],
            "emb": self.embeddings[batch["items"]],
            "targets": batch["targets"],
            "mask": torch.ones_like(batch["targets"], dtype=torch.bool),
        }

    def _loader(self, dataset: DictDataset, collate: Any, batch_size: int, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.hparams.seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)

    def train_dataloader(self) -> CombinedLoader:
        """Pairs and rating lists together (whichever exist); the shorter loader cycles."""
        hp = self.hparams
        n_pairs, n_lists = len(self.train_pairs), len(self.rating_lists)
        loaders = {}
        if n_pairs:
            loaders["pairs"] = self._loader(self.train_pairs, self._collate_pairs, hp.batch_size, True)
        if n_lists:
            list_batch = max(1, hp.batch_size * n_lists // n_pairs) if n_pairs else hp.batch_size
            loaders["ratings"] = self._loader(self.rating_lists, self._collate_lists, list_batch, True)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader | list:
        """Held-out pairs of the training users (none when there are no validation pairs)."""
        if len(self.val_pairs) == 0:
            return []
        return self._loader(self.val_pairs, self._collate_pairs, 1024, False)


@dataclass(frozen=True)
class HeldOutUser:
    """A user never seen in training: a pool of enrollment pairs and separate test pairs (item indices)."""

    user: int
    enroll: UserPairs
    test: UserPairs


class DemoTasteDataModule(_TasteDataModule):
    """Pairs and ratings from simulated raters over the shipped demo images (``assets/demo_taste``).

    Users ``0 .. num_train_users − 1`` train the model; the next ``num_heldout_users`` are held out entirely and
    only ever enrolled from a few labels (:attr:`heldout`).

    Args:
        num_train_users: raters whose labels train the model.
        num_heldout_users: raters kept for enrollment tests.
        pairs_per_user: training pairs per training user.
        ratings_per_user: rated items per training user, grouped into lists of ``list_size``.
        list_size: items per rating list.
        val_pairs_per_user: held-out pairs per training user (validation).
        enroll_pool: enrollment pairs drawn per held-out user.
        test_pairs_per_user: test pairs per held-out user.
        rater_beta: the simulated raters' rationality (Bradley-Terry inverse temperature).
        individual_noise: spread of individual tastes around their group's.
        batch_size: pairs (and rating lists) per batch.
        seed: seed of raters and labels.
        num_val_users: validation raters of the same family, drawn from a separate generator (so the other raters
            and labels do not change) and never trained on: settings such as the enrollment prior's strength are
            chosen on them (:attr:`validation_raters`), never on the held-out raters.
    """

    def __init__(
        self,
        num_train_users: int = 60,
        num_heldout_users: int = 20,
        pairs_per_user: int = 200,
        ratings_per_user: int = 48,
        list_size: int = 8,
        val_pairs_per_user: int = 40,
        enroll_pool: int = 64,
        test_pairs_per_user: int = 200,
        rater_beta: float = 1.5,
        individual_noise: float = 0.35,
        batch_size: int = 256,
        seed: int = 0,
        num_val_users: int = 10,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.heldout: list[HeldOutUser] = []
        self.validation_raters: list[HeldOutUser] = []

    def setup(self, stage: str | None = None) -> None:
        """Draw every user and label once (same seed, same data in every process)."""
        if self.embeddings is not None:
            return
        hp = self.hparams
        items = load_demo_items()
        self.items = items
        self.embeddings = torch.from_numpy(items.embeddings)
        self.population = SimulatedPopulation(
            items.standardized,
            hp.num_train_users + hp.num_heldout_users,
            beta=hp.rater_beta,
            individual_noise=hp.individual_noise,
            seed=hp.seed,
        )
        pop, n_items = self.population, len(items.names)
        train = [pop.pairs(u, hp.pairs_per_user) for u in range(hp.num_train_users)]
        val = [pop.pairs(u, hp.val_pairs_per_user) for u in range(hp.num_train_users)]
        self.train_users_pairs = train
        self.train_pairs = self._pair_set(train)
        self.val_pairs = self._pair_set(val)
        lists_per_user = hp.ratings_per_user // hp.list_size
        users, rated, targets = [], [], []
        for u in range(hp.num_train_users):
            chosen = pop.rng.choice(n_items, hp.ratings_per_user, replace=False)
            ratings = pop.ratings(u, chosen)
            users += [u] * lists_per_user
            rated.append(chosen[: lists_per_user * hp.list_size].reshape(lists_per_user, hp.list_size))
            targets.append(ratings[: lists_per_user * hp.list_size].reshape(lists_per_user, hp.list_size))
        self.rating_lists = DictDataset(
            user=torch.tensor(users),
            items=torch.from_numpy(np.concatenate(rated)),
            targets=torch.from_numpy(np.concatenate(targets)),
        )
        self.heldout = [
            HeldOutUser(u, pop.pairs(u, hp.enroll_pool), pop.pairs(u, hp.test_pairs_per_user))
            for u in range(hp.num_train_users, hp.num_train_users + hp.num_heldout_users)
        ]
        if hp.num_val_users:
            val_pop = SimulatedPopulation(
                items.standardized,
                hp.num_val_users,
                beta=hp.rater_beta,
                individual_noise=hp.individual_noise,
                seed=hp.seed + 1_000_003,
            )
            self.validation_raters = [
                HeldOutUser(u, val_pop.pairs(u, hp.enroll_pool), val_pop.pairs(u, hp.test_pairs_per_user))
                for u in range(hp.num_val_users)
            ]

    @staticmethod
    def _pair_set(per_user: list[UserPairs]) -> DictDataset:
        return DictDataset(
            user=torch.cat([torch.full((len(p.a),), u) for u, p in enumerate(per_user)]),
            a=torch.from_numpy(np.concatenate([p.a for p in per_user])),
            b=torch.from_numpy(np.concatenate([p.b for p in per_user])),
            label=torch.from_numpy(np.concatenate([p.label for p in per_user])),
        )


class PairsTasteDataModule(_TasteDataModule):
    """Per-user pairs over a fixed table of item embeddings (simulated populations, benchmarks, tests).

    Args:
        embeddings: item embeddings ``[N, D]``.
        train: one :class:`UserPairs` per training user (user index = position).
        val: held-out pairs of the same users (validation loss, early stopping), or ``None``.
        batch_size: pairs per batch.
        seed: seed of the shuffling.
    """

    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        train: list[UserPairs],
        val: list[UserPairs] | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["embeddings", "train", "val"])
        self.embeddings = torch.as_tensor(np.asarray(embeddings, np.float32))
        self.train_pairs = DemoTasteDataModule._pair_set(train)
        self.val_pairs = (
            DemoTasteDataModule._pair_set(val)
            if val
            else DictDataset(
                user=torch.zeros(0, dtype=torch.long),
                a=torch.zeros(0, dtype=torch.long),
                b=torch.zeros(0, dtype=torch.long),
                label=torch.zeros(0),
            )
        )
        self.rating_lists = DictDataset(user=torch.zeros(0, dtype=torch.long))

    def setup(self, stage: str | None = None) -> None:
        """Everything is built in the constructor."""
