"""Probe: does an ensemble of personal taste models (several training seeds) beat a single one at 8 pairs?

Trains the default path (:class:`TasteRecipe`, colour statistics) with ``--members`` seeds on the content-taste
population of ``scripts/bench_taste.py``, calibrates each on the validation raters, enrolls every held-out rater in
each member and averages the members' probabilities. Prints each member's accuracy at 8 pairs, the ensemble's, and
single runs of two width changes (rank 16, hidden 128). Not shipped: the scoring folder holds one model.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_taste_ensemble.py --family clusters --seed 0``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_taste import accuracy, calibration_users, colour_features, content_data  # noqa: E402

from mmpref.reward.trainers import quiet_lightning  # noqa: E402
from mmpref.vision.taste.model import CodePrior, enroll, predict_pairs  # noqa: E402
from mmpref.vision.taste.system import PairsTasteDataModule  # noqa: E402
from mmpref.vision.taste.train import TasteRecipe, calibrate_enrollment, fit_taste_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="clusters", choices=("gaussian", "sparse", "clusters"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    quiet_lightning()
    torch.set_num_threads(1)
    items, _, train, val_pairs, val_users, test_users = content_data(args.seed, args.family)
    rich = np.concatenate([items.embeddings, colour_features(items)], 1)
    emb = torch.from_numpy(rich.astype(np.float32))
    n = args.pairs

    def train_members(recipe: TasteRecipe, count: int) -> list:
        out = []
        for m in range(count):
            data = PairsTasteDataModule(rich, train, val_pairs, seed=args.seed)
            model, _ = fit_taste_model(data, len(train), recipe, seed=args.seed * 100 + m)
            prior, _ = calibrate_enrollment(model, CodePrior.from_model(model), calibration_users(emb, val_users))
            out.append((model, prior))
        return out

    def score(members: list) -> float:
        accs = []
        for e, t in test_users:
            probs = [
                predict_pairs(
                    model,
                    enroll(model, prior, emb[e.a[:n]], emb[e.b[:n]], torch.from_numpy(e.label[:n])),
                    emb[t.a],
                    emb[t.b],
                    prior.temperature,
                )
                for model, prior in members
            ]
            accs.append(accuracy(np.mean(probs, 0), t.label))
        return float(np.mean(accs))

    members = train_members(TasteRecipe(), args.members)
    singles = [score([m]) for m in members]
    print(f"{args.family} seed {args.seed}, {n} pairs: members {' '.join(f'{a:.3f}' for a in singles)} "
          f"(mean {np.mean(singles):.3f}); ensemble of {args.members}: {score(members):.3f}")  # fmt: skip
    rank16 = score(train_members(TasteRecipe(rank=16), 1))
    hidden128 = score(train_members(TasteRecipe(hidden=128), 1))
    print(f"single run, rank 16: {rank16:.3f}; hidden 128: {hidden128:.3f} (compare member 0: {singles[0]:.3f})")


if __name__ == "__main__":
    main()
