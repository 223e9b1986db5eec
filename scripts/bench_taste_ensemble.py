"""Probe: does an ensemble of personal taste models (several training seeds) beat a single one at 8 pairs?

Trains the default path (:class:`TasteRecipe`, colour statistics) with ``--members`` seeds on the content-taste
population of ``scripts/bench_taste.py``, calibrates each on the validation raters, enrolls every held-out rater in
each member and averages the members' probabilities. Also the members merged into one model that a scoring folder can
hold (:func:`merge_members`: trunks side by side, score = the members' mean, one joint code enrolled at once). Prints
each member's accuracy at 8 pairs, the ensemble's, the merged model's, and single runs of two width changes (rank 16,
hidden 128). Neither ensemble is shipped (docs/taste.md: +0.7 to +1.2 points on average, inside the seed spread).

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
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, enroll, predict_pairs  # noqa: E402
from mmpref.vision.taste.system import PairsTasteDataModule  # noqa: E402
from mmpref.vision.taste.train import TasteRecipe, calibrate_enrollment, fit_taste_model  # noqa: E402


@torch.no_grad()
def merge_members(members: list[PersonalTasteModel]) -> PersonalTasteModel:
    """One model whose score is the members' mean: s(x, [z₁..z_K]) = (1/K) Σ_m φ_m(x)ᵀ(w₀_m + B_m z_m).

    Each member's input LayerNorm affine (γ_m, β_m) is folded into its first layer (W₁ diag γ_m, W₁ β_m + b₁), so
    the merged trunk has a plain LayerNorm, the first layers stacked and the second layers block-diagonal; the
    population directions are stacked, the bases block-diagonal (both / K), and each user's code the members' codes
    side by side.
    """
    first = members[0]
    k, rank, hidden = len(members), first.rank, first.hidden
    out = PersonalTasteModel(first.embedding_dim, first.user_codes.num_embeddings, k * rank, k * hidden, dropout=0.0)
    norm, layer1, layer2 = out.trunk[0], out.trunk[1], out.trunk[4]
    norm.weight.fill_(1.0), norm.bias.zero_()
    layer1.weight.copy_(torch.cat([m.trunk[1].weight * m.trunk[0].weight[None] for m in members]))
    layer1.bias.copy_(torch.cat([m.trunk[1].weight @ m.trunk[0].bias + m.trunk[1].bias for m in members]))
    layer2.weight.copy_(torch.block_diag(*[m.trunk[4].weight for m in members]))
    layer2.bias.copy_(torch.cat([m.trunk[4].bias for m in members]))
    out.population.copy_(torch.cat([m.population for m in members]) / k)
    out.basis.copy_(torch.block_diag(*[m.basis for m in members]) / k)
    out.user_codes.weight.copy_(torch.cat([m.user_codes.weight for m in members], 1))
    return out.eval()


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
    merged = merge_members([model.eval() for model, _ in members])
    prior, _ = calibrate_enrollment(merged, CodePrior.from_model(merged), calibration_users(emb, val_users))
    print(f"merged into one model (joint code of rank {merged.rank}): {score([(merged, prior)]):.3f}")
    rank16 = score(train_members(TasteRecipe(rank=16), 1))
    hidden128 = score(train_members(TasteRecipe(hidden=128), 1))
    print(f"single run, rank 16: {rank16:.3f}; hidden 128: {hidden128:.3f} (compare member 0: {singles[0]:.3f})")


if __name__ == "__main__":
    main()
