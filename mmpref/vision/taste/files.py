"""Training the personal taste model from real files: Pick-a-Pic-style pairs with ``user_id`` and ratings tables.

Every distinct image (a path, or the encoded bytes inside the Parquet) is embedded once through the content-hash
cache, so a second run over the same data costs no encoder time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmpref.data import DataError, read_pickapic_parquet, read_ratings_table
from mmpref.data.io import TiePolicy
from mmpref.reward.datamodule import DictDataset
from mmpref.vision.cache import EmbeddingCache
from mmpref.vision.encoders import EfficientNetLite0Encoder, ImageEncoder
from mmpref.vision.media import load_image
from mmpref.vision.taste.system import _TasteDataModule


class TasteFilesDataModule(_TasteDataModule):
    """Per-user pairs and ratings read from files, for :class:`~mmpref.vision.taste.system.PersonalTasteSystem`.

    Args:
        pairs: Pick-a-Pic-style Parquet (``caption, jpg_0, jpg_1, label_0, user_id``); optional.
        ratings: ratings table, CSV or Parquet (``image, user, rating``); optional.
        ties: tie policy for the pairs (``"keep"`` as 0.5 or ``"drop"``).
        rating_scale: (low, high) of the ratings.
        cache_dir: embedding cache folder.
        list_size: ratings per list (a user's ratings are chunked into lists of this size, the last one masked).
        val_fraction: share of the trained raters' pairs kept for validation (the loss early stopping watches).
        batch_size: pairs per batch.
        seed: seed of the split and the shuffling.
        encoder: the image encoder (default EfficientNet-Lite0).
        val_raters: share of the raters (with pairs) held out of training entirely, at least 3 when any: the
            enrollment prior's strength and the temperature are chosen on them (:attr:`validation_raters`).
        media_root: folder(s) the image paths of both files may resolve into (default: each file's own folder);
            set it when the images live outside the table's folder.

    Attributes:
        user_ids: names of the trained raters, in code-table order (counted from the data).
        validation_raters: ``{name: (a, b, label)}`` item-index arrays of each held-out rater's pairs.
    """

    def __init__(
        self,
        pairs: str | Path | None = None,
        ratings: str | Path | None = None,
        ties: TiePolicy = "keep",
        rating_scale: tuple[float, float] = (1.0, 5.0),
        cache_dir: str | Path = "runs/embedding_cache",
        list_size: int = 8,
        val_fraction: float = 0.1,
        batch_size: int = 256,
        seed: int = 0,
        encoder: ImageEncoder | None = None,
        val_raters: float = 0.0,
        media_root: str | list[str] | None = None,
    ):
        super().__init__()
        if pairs is None and ratings is None:
            raise ValueError("give pairs (Pick-a-Pic Parquet with user_id) and/or ratings (image, user, rating)")
        self.save_hyperparameters(ignore=["encoder"])
        self._encoder = encoder
        self.user_ids: list[str] = []
        self.validation_raters: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def num_users(self) -> int | None:
        """The trained raters, counted from the data (``None`` before :meth:`setup`)."""
        return len(self.user_ids) if self.embeddings is not None else None

    def _compute(self, items: list) -> np.ndarray:
        if self._encoder is None:
            self._encoder = EfficientNetLite0Encoder()
        return self._encoder.embed_images([load_image(item, max_side=512) for item in items])

    def setup(self, stage: str | None = None) -> None:
        """Read, validate and embed everything once."""
        if self.embeddings is not None:
            return
        hp = self.hparams
        root = hp.media_root
        pairs = read_pickapic_parquet(hp.pairs, ties=hp.ties, media_root=root) if hp.pairs is not None else []
        ratings = (
            read_ratings_table(hp.ratings, scale=tuple(hp.rating_scale), media_root=root)
            if hp.ratings is not None
            else []
        )
        anonymous = [p.id for p in pairs if p.user_id is None]
        if anonymous:
            raise DataError(
                hp.pairs,
                [
                    f"{len(anonymous)} pair(s) have no user_id (first: {anonymous[0]!r}); a "
                    "personal model needs a user_id column"
                ],
            )
        items: dict[object, int] = {}
        for item in [x for p in pairs for x in (p.a, p.b)] + [r.item for r in ratings]:
            items.setdefault(item, len(items))
        self.item_keys = list(items)  # row i of the embeddings is item_keys[i] (a path or the image bytes)
        users = sorted({p.user_id for p in pairs} | {r.user_id for r in ratings})
        held: set[str] = set()
        with_pairs = sorted({p.user_id for p in pairs})
        if hp.val_raters > 0 and len(with_pairs) >= 6:
            count = max(3, int(round(hp.val_raters * len(with_pairs))))
            held = set(np.random.default_rng([hp.seed, 1]).choice(with_pairs, count, replace=False).tolist())
        users = [u for u in users if u not in held]
        self.user_ids = users
        user_index = {u: i for i, u in enumerate(users)}
        self.encoder_id = self._encoder.encoder_id if self._encoder is not None else EfficientNetLite0Encoder.ID
        cache = EmbeddingCache(hp.cache_dir, self.encoder_id)
        self.embeddings = torch.from_numpy(cache.embed(list(items), self._compute))
        for name in sorted(held):
            rows = [p for p in pairs if p.user_id == name]
            self.validation_raters[name] = (
                np.array([items[p.a] for p in rows]),
                np.array([items[p.b] for p in rows]),
                np.array([p.label for p in rows], np.float32),
            )
        ratings = [r for r in ratings if r.user_id not in held]
        pairs = [p for p in pairs if p.user_id not in held]
        rng = np.random.default_rng(hp.seed)
        order = rng.permutation(len(pairs))
        n_val = int(round(hp.val_fraction * len(pairs)))

        def pair_set(chosen: np.ndarray) -> DictDataset:
            rows = [pairs[i] for i in chosen]
            return DictDataset(
                user=torch.tensor([user_index[p.user_id] for p in rows], dtype=torch.long),
                a=torch.tensor([items[p.a] for p in rows], dtype=torch.long),
                b=torch.tensor([items[p.b] for p in rows], dtype=torch.long),
                label=torch.tensor([p.label for p in rows], dtype=torch.float32),
            )

        self.train_pairs, self.val_pairs = pair_set(order[n_val:]), pair_set(order[:n_val])
        k = hp.list_size
        list_users, list_items, list_targets, list_mask = [], [], [], []
        by_user: dict[str, list] = {}
        for r in ratings:
            by_user.setdefault(r.user_id, []).append(r)
        for user, rows in by_user.items():
            for start in range(0, len(rows), k):
                chunk = rows[start : start + k]
                if len(chunk) < 2:
                    continue
                pad = k - len(chunk)
                list_users.append(user_index[user])
                list_items.append([items[r.item] for r in chunk] + [0] * pad)
                list_targets.append([r.rating for r in chunk] + [0.0] * pad)
                list_mask.append([True] * len(chunk) + [False] * pad)
        self.rating_lists = DictDataset(
            user=torch.tensor(list_users, dtype=torch.long).reshape(-1),
            items=torch.tensor(list_items, dtype=torch.long).reshape(-1, k),
            targets=torch.tensor(list_targets, dtype=torch.float32).reshape(-1, k),
            mask=torch.tensor(list_mask, dtype=torch.bool).reshape(-1, k),
        )
