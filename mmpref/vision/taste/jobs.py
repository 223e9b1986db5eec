"""CLI jobs of personal taste: ``taste-train`` (files → scoring folder), ``taste-eval`` (held-out raters).

Also the pieces ``mmpref enroll`` uses for Pick-a-Pic Parquet (``--rater``) and active enrollment (``--ask N``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mmpref.data.io import atomic_write

log = logging.getLogger(__name__)
ENCODERS = ("efficientnet-lite0", "efficientnet-lite0+colour")


def _fail(job: str, err: BaseException) -> int:
    print(f"mmpref {job}: {err}", file=sys.stderr)
    return 2


def read_enroll_parquet(path: str | Path, rater: str, ties: str = "keep") -> list:
    """One rater's pairs from a Pick-a-Pic-style Parquet (``user_id`` column), as :class:`PreferencePair` records.

    Raises:
        ScoringError: the file has no ``user_id`` column or no pairs of ``rater`` (the message lists some ids).
    """
    from mmpref.data import read_pickapic_parquet
    from mmpref.vision.taste.scoring import ScoringError

    pairs = read_pickapic_parquet(path, ties=ties)
    if not any(p.user_id is not None for p in pairs):
        raise ScoringError(f"{path}: no 'user_id' column; add one, or enroll from a JSONL labels file")
    mine = [p for p in pairs if p.user_id == rater]
    if not mine:
        known = sorted({str(p.user_id) for p in pairs})
        raise ScoringError(
            f"{path}: no pairs with user_id {rater!r} (field 'user_id' holds {', '.join(known[:8])}"
            f"{' ...' if len(known) > 8 else ''}); pick one with --rater"
        )
    return mine


def _validation_users(data, prefix: int = 8) -> list:
    """Held-out raters of a files data module as calibration users: first ``prefix`` pairs enroll, the rest test."""
    from mmpref.vision.taste.train import CalibrationUser

    emb, users = data.embeddings, []
    for a, b, label in data.validation_raters.values():
        if len(label) < prefix + 4:
            continue
        users.append(
            CalibrationUser(
                emb[a[:prefix]], emb[b[:prefix]], torch.from_numpy(label[:prefix]),
                emb[a[prefix:]], emb[b[prefix:]], torch.from_numpy(label[prefix:]),
            )
        )  # fmt: skip
    return users


def train_from_files(
    out: str | Path,
    pairs: str | Path | None = None,
    ratings: str | Path | None = None,
    encoder: str = "efficientnet-lite0+colour",
    val_raters: float = 0.2,
    seed: int = 0,
    max_epochs: int = 60,
    ties: str = "keep",
    image_encoder=None,
    media_root: str | None = None,
) -> dict:
    """Train on files and write the scoring folder ``out`` (model, prior, a profile per rater, the shared cache).

    Users are counted from the data and kept by name: every rater in the files gets ``users/<id>.json`` (fitted
    from all their pairs and ratings), so trained raters can be scored by id at once.
    """
    from mmpref.reward.trainers import quiet_lightning
    from mmpref.vision.encoders import EfficientNetLite0Encoder
    from mmpref.vision.taste.features import ColourStatsEncoder
    from mmpref.vision.taste.files import TasteFilesDataModule
    from mmpref.vision.taste.model import CodePrior, enroll, save_taste_model
    from mmpref.vision.taste.train import TasteRecipe, calibrate_enrollment, fit_taste_model

    quiet_lightning()
    if image_encoder is None:
        if encoder not in ENCODERS:
            raise ValueError(f"--encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        base = EfficientNetLite0Encoder()
        image_encoder = ColourStatsEncoder(base) if encoder.endswith("+colour") else base
    out = Path(out)
    start = time.perf_counter()
    data = TasteFilesDataModule(
        pairs=pairs, ratings=ratings, ties=ties, cache_dir=out / "cache", encoder=image_encoder,
        val_raters=val_raters, seed=seed, media_root=media_root,
    )  # fmt: skip
    data.setup()
    embedded = time.perf_counter() - start
    if not data.user_ids:
        raise ValueError("no raters to train on: the files hold no pairs or ratings with a user id")
    recipe = TasteRecipe(max_epochs=max_epochs)
    model, summary = fit_taste_model(data, len(data.user_ids), recipe, seed=seed)
    prior = CodePrior.from_model(model)
    calibration = None
    users = _validation_users(data)
    if len(users) >= 3:
        prior, calibration = calibrate_enrollment(model, prior, users, recipe.prior_scales, recipe.calibration_counts)
    save_taste_model(model, prior, data.encoder_id, out)
    # A profile per rater, from everything they labelled (trained raters and held-out validation raters alike).
    emb = data.embeddings
    per_user: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for dataset in (data.train_pairs, data.val_pairs):
        t = dataset.tensors
        for i, name in enumerate(data.user_ids):
            chosen = t["user"] == i
            per_user.setdefault(name, []).append(
                (t["a"][chosen].numpy(), t["b"][chosen].numpy(), t["label"][chosen].numpy())
            )
    if len(data.rating_lists):
        from mmpref.vision.taste.model import ratings_to_pairs

        t = data.rating_lists.tensors
        for row in range(len(t["user"])):
            keep = t["mask"][row].numpy()
            i, j, label = ratings_to_pairs(t["targets"][row].numpy()[keep])
            items = t["items"][row].numpy()[keep]
            per_user.setdefault(data.user_ids[int(t["user"][row])], []).append((items[i], items[j], label))
    for name, arrays in data.validation_raters.items():
        per_user[name] = [arrays]
    for name, chunks in per_user.items():
        a, b, label = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
        profile = enroll(model, prior, emb[a], emb[b], torch.from_numpy(label.astype(np.float32)), user_id=name)
        profile.save(out / "users" / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}.json")
    report = {
        "raters_trained": len(data.user_ids),
        "raters_validation": len(data.validation_raters),
        "pairs": len(data.train_pairs) + len(data.val_pairs),
        "rating_lists": len(data.rating_lists),
        "items": len(emb),
        "encoder_id": data.encoder_id,
        "embed_seconds": embedded,
        "train_seconds": time.perf_counter() - start - embedded,
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "prior_scale": calibration["prior_scale"] if calibration else None,
        "temperature": prior.temperature,
    }
    with atomic_write(out / "training.json", "w") as handle:
        json.dump({"report": report, "training": summary, "calibration": calibration}, handle, indent=1)
    return report


def run_taste_train(argv: Sequence[str]) -> int:
    """``mmpref taste-train``: train a personal taste model from files and write the scoring folder."""
    parser = argparse.ArgumentParser(prog="mmpref taste-train", description=run_taste_train.__doc__)
    parser.add_argument("--pairs", default=None, help="Pick-a-Pic-style Parquet with a user_id column")
    parser.add_argument("--ratings", default=None, help="ratings table (CSV/Parquet: image, user, rating)")
    parser.add_argument("--out", required=True, help="model folder to write (then: mmpref enroll / score --model)")
    parser.add_argument("--encoder", default="efficientnet-lite0+colour", choices=ENCODERS)
    parser.add_argument("--val-raters", type=float, default=0.2, help="share of raters held out for calibration")
    parser.add_argument("--ties", default="keep", choices=("keep", "drop"))
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--media-root", default=None, help="folder image paths may live in (default: each file's)")
    args = parser.parse_args(argv)
    if args.pairs is None and args.ratings is None:
        return _fail("taste-train", ValueError("give --pairs FILE.parquet and/or --ratings FILE.csv"))
    from mmpref.data import DataError
    from mmpref.vision.media import MediaError

    try:
        r = train_from_files(
            args.out,
            args.pairs,
            args.ratings,
            args.encoder,
            args.val_raters,
            args.seed,
            args.max_epochs,
            args.ties,
            media_root=args.media_root,
        )
    except (DataError, MediaError, FileNotFoundError, ValueError) as err:
        return _fail("taste-train", err)
    print(
        f"trained on {r['raters_trained']} raters ({r['pairs']} pairs, {r['rating_lists']} rating lists, "
        f"{r['items']} images; embedding {r['embed_seconds']:.0f}s, training {r['train_seconds']:.0f}s, best epoch "
        f"{r['best_epoch']} of {r['epochs_run']}); {r['raters_validation']} raters held out for calibration "
        f"(prior scale {r['prior_scale']}, temperature {r['temperature']:.2f})\n"
        f"wrote {args.out}/ (model, prior, users/<id>.json for every rater, cache/); next: mmpref enroll / score "
        f"--model {args.out}"
    )
    return 0


def evaluate_heldout(scorer, pairs: list, enroll_n: int, p_true: dict | None = None) -> dict:
    """Enroll each rater in ``pairs`` from their first ``enroll_n`` pairs and score the rest.

    Returns per-rater rows and means: personal accuracy, population accuracy (the prior mean code), ECE of the
    personal probabilities at the model's temperature and at the cohort's own (``cohort_temperature``, fitted from
    the raters' enrollment pairs only), and the noise ceiling E[max(p, 1 − p)] where the file gives the true P
    (``p_true``).
    """
    from mmpref.reward.metrics import PairwiseCalibrationError
    from mmpref.vision.taste.model import UserProfile, enroll, predict_pairs
    from mmpref.vision.taste.train import cohort_temperature

    by_user: dict[str, list] = {}
    for p in pairs:
        by_user.setdefault(str(p.user_id), []).append(p)
    keys = sorted({x for p in pairs for x in (p.a, p.b)}, key=lambda k: (isinstance(k, bytes), str(k)[:64]))
    index = {k: i for i, k in enumerate(keys)}
    emb = torch.from_numpy(scorer.embed([k if isinstance(k, bytes) else Path(k) for k in keys]))
    model, prior = scorer.model, scorer.prior
    population = UserProfile("population", prior.mean, prior.covariance, 0)
    rows, ece, ece_cohort = [], PairwiseCalibrationError(), PairwiseCalibrationError()
    raters = {}
    for name, rows_u in sorted(by_user.items()):
        if len(rows_u) >= enroll_n + 2:
            a, b = np.array([index[p.a] for p in rows_u]), np.array([index[p.b] for p in rows_u])
            raters[name] = (a, b, np.array([p.label for p in rows_u], np.float32))
    enrolled = [(emb[a[:enroll_n]], emb[b[:enroll_n]], torch.from_numpy(y[:enroll_n])) for a, b, y in raters.values()]
    t_cohort, _ = cohort_temperature(model, prior, enrolled)
    for name, (a, b, y) in raters.items():
        rows_u = by_user[name]
        profile = enroll(model, prior, emb[a[:enroll_n]], emb[b[:enroll_n]], torch.from_numpy(y[:enroll_n]))
        test = slice(enroll_n, None)
        prob = predict_pairs(model, profile, emb[a[test]], emb[b[test]], prior.temperature)
        pop = predict_pairs(model, population, emb[a[test]], emb[b[test]], prior.temperature)
        decided = y[test] != 0.5
        row = {
            "rater": name,
            "test_pairs": int(decided.sum()),
            "personal": float(((prob > 0.5) == (y[test] > 0.5))[decided].mean()),
            "population": float(((pop > 0.5) == (y[test] > 0.5))[decided].mean()),
        }
        if p_true is not None:
            truth = np.array([p_true[p.id] for p in rows_u[enroll_n:]])
            row["noise_ceiling"] = float(np.maximum(truth, 1 - truth).mean())
        ece.update(torch.from_numpy(prob), torch.from_numpy(y[test]))
        cohort = predict_pairs(model, profile, emb[a[test]], emb[b[test]], t_cohort)
        ece_cohort.update(torch.from_numpy(cohort), torch.from_numpy(y[test]))
        rows.append(row)
    if not rows:
        raise ValueError(f"no rater has more than {enroll_n + 1} pairs; lower --enroll or give more pairs")

    def mean_ci(key: str) -> tuple[float, float]:
        v = np.array([r[key] for r in rows])
        return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0

    summary = {
        "raters": len(rows),
        "enroll_pairs": enroll_n,
        "ece": float(ece.compute()),
        "temperature": prior.temperature,
        "cohort_temperature": t_cohort,
        "ece_cohort": float(ece_cohort.compute()),
    }
    for key in ("personal", "population", "noise_ceiling"):
        if key in rows[0]:
            summary[key], summary[f"{key}_ci95"] = mean_ci(key)
    return {"summary": summary, "raters": rows}


def run_taste_eval(argv: Sequence[str]) -> int:
    """``mmpref taste-eval``: enroll held-out raters from their first N pairs and score the rest."""
    parser = argparse.ArgumentParser(prog="mmpref taste-eval", description=run_taste_eval.__doc__)
    parser.add_argument("pairs", help="Pick-a-Pic-style Parquet of held-out raters (user_id; optional p_true)")
    parser.add_argument("--model", required=True, help="personal taste model folder (mmpref taste-train)")
    parser.add_argument("--enroll", type=int, default=8, help="pairs per rater to enroll from (the rest are tested)")
    parser.add_argument("--json", default=None, help="write per-rater results as JSON")
    parser.add_argument("--cache", default=None, help="embedding cache (default <model>/cache)")
    parser.add_argument("--media-root", default=None, help="folder image paths may live in (default: the file's)")
    args = parser.parse_args(argv)
    from mmpref.data import DataError, read_pickapic_parquet
    from mmpref.vision.media import MediaError
    from mmpref.vision.taste.scoring import ScoringError, TasteScorer

    try:
        pairs = read_pickapic_parquet(args.pairs, ties="keep", media_root=args.media_root)
        if any(p.user_id is None for p in pairs):
            raise ScoringError(f"{args.pairs}: field 'user_id' is missing on some rows; every pair needs its rater")
        import pandas as pd

        columns = pd.read_parquet(args.pairs, columns=None).columns
        p_true = None
        if "p_true" in columns:
            frame = pd.read_parquet(args.pairs, columns=["p_true"])
            p_true = {p.id: float(v) for p, v in zip(pairs, frame["p_true"], strict=True)}
        scorer = TasteScorer(args.model, cache_dir=args.cache)
        result = evaluate_heldout(scorer, pairs, args.enroll, p_true)
    except (DataError, ScoringError, MediaError, FileNotFoundError, ValueError) as err:
        return _fail("taste-eval", err)
    s = result["summary"]
    print(f"{s['raters']} held-out raters, enrolled from {s['enroll_pairs']} pairs each, tested on the rest:")
    print(
        f"  personal model    {s['personal']:.3f} ± {s['personal_ci95']:.3f}   (ECE {s['ece']:.3f} at the model's "
        f"temperature {s['temperature']:.2f}; {s['ece_cohort']:.3f} at these raters' own, "
        f"{s['cohort_temperature']:.2f}, fitted from their enrollment pairs)"
    )
    print(f"  population model  {s['population']:.3f} ± {s['population_ci95']:.3f}")
    if "noise_ceiling" in s:
        print(f"  noise ceiling     {s['noise_ceiling']:.3f}")
    else:
        print("  noise ceiling     unknown (add a p_true column with each pair's true P(jpg_0 preferred))")
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


def ask_in_terminal(paths: Sequence[Path]) -> Callable[[int, int], float]:
    """An ``answer(a, b)`` that shows two file names and reads 1 (first better), 2 (second) or = (same)."""

    def answer(a: int, b: int) -> float:
        while True:
            reply = input(f"\n  1: {paths[a]}\n  2: {paths[b]}\nwhich do you prefer? [1/2/=] ").strip()
            if reply in ("1", "2", "="):
                return {"1": 1.0, "2": 0.0, "=": 0.5}[reply]
            print("answer 1, 2 or =")

    return answer


def active_enroll(scorer, user: str, pool: Sequence[Path], n: int, answer, labels_out: str | Path | None = None):
    """Choose n pairs from ``pool`` by information about the user's code, ask them, and enroll from the answers."""
    from mmpref.data import PreferencePair, write_jsonl_manifest
    from mmpref.vision.taste.active import choose_pairs

    emb = torch.from_numpy(scorer.embed(list(pool)))
    chosen = choose_pairs(scorer.model, scorer.prior, emb, np.arange(len(pool)), n, answer=answer)
    records = [
        PreferencePair(id=f"ask{k}", a=str(pool[a]), b=str(pool[b]), label=float(y), user_id=user)
        for k, (a, b, y) in enumerate(zip(chosen.a, chosen.b, chosen.label, strict=True))
    ]
    if labels_out:
        write_jsonl_manifest(records, labels_out)
    return scorer.enroll_from_records(user, records), chosen


def run_active_enroll(args: argparse.Namespace) -> int:
    """``mmpref enroll --ask N --pool FOLDER``: ask the N most informative pairs in the terminal, then enroll."""
    from mmpref.vision.media import MediaError
    from mmpref.vision.taste.scoring import ScoringError, TasteScorer, collect_media

    try:
        if not args.pool:
            raise ScoringError("--ask needs --pool: the user's images (files or folders) to choose pairs from")
        pool = collect_media(args.pool)
        scorer = TasteScorer(args.model, cache_dir=args.cache)
        profile, chosen = active_enroll(scorer, args.user, pool, args.ask, ask_in_terminal(pool), args.labels_out)
    except (ScoringError, MediaError, FileNotFoundError, ValueError) as err:
        return _fail("enroll", err)
    except (EOFError, KeyboardInterrupt):
        return _fail("enroll", RuntimeError("stopped before all questions were answered; nothing was saved"))
    print(
        f"enrolled {profile.user_id!r} from {profile.num_labels} chosen pairs (expected information "
        f"{chosen.gain.sum():.2f} nats); code uncertainty {profile.uncertainty:.3f}; "
        f"profile: {scorer.profile_path(args.user)}"
    )
    return 0
