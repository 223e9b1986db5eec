"""Calibration of personal probabilities on raters of another family: where the temperature comes from.

The same trained default models as ``scripts/bench_taste.py`` (content-taste population with colour statistics;
the demo population without). Held-out raters are enrolled from their first n pairs and tested on their other pairs;
accuracy does not depend on the temperature (it only rescales margins), ECE does. Temperatures compared:

* **validation T** (the default): fitted on validation raters of the training family (``calibrate_enrollment``).
* **plug-in**: the MAP code's margin without the Laplace posterior variance, validation T (what (c) adds).
* **per-rater T** (attempt 1): each rater's T from the leave-one-out likelihood of their own n enrollment pairs,
  shrunk towards T₀ by a log-normal prior, log T_u ~ N(log T₀, τ²) (posterior mode); T₀ and τ chosen on the
  validation raters' held-out likelihood at n ∈ {4, 8, 16}.
* **cohort T** (attempt 2, ``cohort_temperature``): one T for all raters being enrolled, from the pooled
  leave-one-out likelihood of their enrollment pairs (no test pair is used), with a log-normal prior around the
  validation T (s = log 2), and without it ("no prior").

ECE intervals: 95 % percentile bootstrap over raters (1,000 resamples).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_taste_calibration.py --seeds 0 1`` (~3 min on one core)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_taste import calibration_users, colour_features, content_data  # noqa: E402

from mmpref.reward.trainers import quiet_lightning  # noqa: E402
from mmpref.vision.taste.model import CodePrior, enroll, predict_pairs  # noqa: E402
from mmpref.vision.taste.system import DemoTasteDataModule, PairsTasteDataModule  # noqa: E402
from mmpref.vision.taste.train import (  # noqa: E402
    COHORT_TEMPERATURES,
    TasteRecipe,
    calibrate_enrollment,
    cohort_temperature,
    fit_taste_model,
    leave_one_out_moments,
    tempered_probability,
)

COUNTS = (4, 8, 16)
TAUS = (0.0, 0.25, 0.5, 1.0, 2.0)
T0S = np.exp(np.linspace(np.log(0.5), np.log(4.0), 16))


def bins(prob: np.ndarray, label: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Per-bin sums [3, bins] (confidence, correctness, count) of ``PairwiseCalibrationError``."""
    confidence = np.maximum(prob, 1 - prob)
    correct = np.where(prob >= 0.5, label, 1 - label)
    index = np.clip(((confidence - 0.5) * 2 * n_bins).astype(int), 0, n_bins - 1)
    return np.stack([np.bincount(index, w, n_bins) for w in (confidence, correct, np.ones_like(prob))])


def ece_with_interval(per_rater: list[np.ndarray], seed: int = 0) -> tuple[float, float, float]:
    """ECE over all raters' pairs and its 95 % bootstrap interval over raters."""
    stack = np.stack(per_rater)  # [U, 3, bins]

    def ece(s: np.ndarray) -> float:
        return float(np.abs(s[0] - s[1]).sum() / max(s[2].sum(), 1))

    rng = np.random.default_rng(seed)
    boot = [ece(stack[rng.integers(0, len(stack), len(stack))].sum(0)) for _ in range(1000)]
    return ece(stack.sum(0)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def log_lik(prob: np.ndarray, label: np.ndarray) -> np.ndarray:
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    return label * np.log(prob) + (1 - label) * np.log(1 - prob)


def rater_rows(model, prior: CodePrior, emb: torch.Tensor, users: list, n: int) -> list[dict]:
    """Per rater: test-pair margin moments after enrolling from n pairs, and the n leave-one-out moments."""
    rows = []
    for e, t in users:
        a, b, y = emb[e.a[:n]], emb[e.b[:n]], torch.from_numpy(e.label[:n])
        profile = enroll(model, prior, a, b, y)
        m, v = predict_pairs(model, profile, emb[t.a], emb[t.b], moments=True)
        loo_m, loo_v = leave_one_out_moments(model, prior, a, b, y)
        rows.append(
            {"m": m, "v": v, "y": t.label.astype(np.float64), "loo_m": loo_m, "loo_v": loo_v, "loo_y": y.double()}
        )
    return rows


def per_rater_temperature(row: dict, t0: float, tau: float) -> float:
    """Posterior mode of log T_u under N(log T₀, τ²) and the rater's leave-one-out likelihood (T₀ when τ = 0)."""
    if tau == 0:
        return t0
    grid = np.log(COHORT_TEMPERATURES)
    fit = [
        log_lik(tempered_probability(row["loo_m"], row["loo_v"], t), row["loo_y"].numpy()).sum() for t in np.exp(grid)
    ]
    return float(np.exp(grid[int(np.argmax(np.asarray(fit) - 0.5 * ((grid - np.log(t0)) / tau) ** 2))]))


def score(rows: list[dict], temperatures: list[float], moderated: bool = True) -> dict:
    probs = [
        tempered_probability(r["m"], r["v"] if moderated else 0 * r["v"], t)
        for r, t in zip(rows, temperatures, strict=True)
    ]
    ece, low, high = ece_with_interval([bins(p, r["y"]) for p, r in zip(probs, rows, strict=True)])
    accuracy = [float(((p > 0.5) == (r["y"] > 0.5))[r["y"] != 0.5].mean()) for p, r in zip(probs, rows, strict=True)]
    ll = float(np.mean(np.concatenate([log_lik(p, r["y"]) for p, r in zip(probs, rows, strict=True)])))
    return {"ece": ece, "ece_ci95": [low, high], "accuracy": float(np.mean(accuracy)), "log_likelihood": ll,
            "temperature_median": float(np.median(temperatures))}  # fmt: skip


def compare(model, prior: CodePrior, emb: torch.Tensor, val_users: list, test_users: list, log) -> dict:
    val = {n: rater_rows(model, prior, emb, val_users, n) for n in COUNTS}
    # attempt 1: T₀ and τ by the validation raters' held-out likelihood over all counts
    pooled = [r for n in COUNTS for r in val[n]]
    t0, tau = max(
        ((t0, tau) for tau in TAUS for t0 in T0S),
        key=lambda g: score(pooled, [per_rater_temperature(r, *g) for r in pooled])["log_likelihood"],
    )
    out = {"per_rater_settings": {"t0": float(t0), "tau": tau}, "validation_temperature": prior.temperature}
    for cohort, users in (("validation", val_users), ("test", test_users)):
        for n in COUNTS:
            rows = val[n] if cohort == "validation" else rater_rows(model, prior, emb, users, n)
            raters = [(emb[e.a[:n]], emb[e.b[:n]], torch.from_numpy(e.label[:n])) for e, _ in users]
            t_cohort, report = cohort_temperature(model, prior, raters)
            t_flat, _ = cohort_temperature(model, prior, raters, spread=float("inf"))
            same = [prior.temperature] * len(rows)
            result = {
                "validation T": score(rows, same),
                "plug-in (no Laplace variance), validation T": score(rows, same, moderated=False),
                "per-rater T (attempt 1)": score(rows, [per_rater_temperature(r, t0, tau) for r in rows]),
                "cohort T, no prior": score(rows, [t_flat] * len(rows)),
                "cohort T (attempt 2, default)": score(rows, [t_cohort] * len(rows)),
            }
            out[f"{cohort}/{n}"] = {"methods": result, "cohort_temperature": t_cohort, "cohort_report": report}
            log(
                f"  {cohort} n={n}: acc {result['validation T']['accuracy']:.3f}; ECE "
                + ", ".join(f"{k} {v['ece']:.3f}" for k, v in result.items())
                + f" (T_val {prior.temperature:.2f}, T_cohort {t_cohort:.2f}, per-rater T0 {t0:.2f} tau {tau})"
            )
    return out


def content(seed: int, family: str, log) -> dict:
    items, _, train, val_pairs, val_users, test_users = content_data(seed, family)
    rich = np.concatenate([items.embeddings, colour_features(items)], 1)
    model, _ = fit_taste_model(
        PairsTasteDataModule(rich, train, val_pairs, seed=seed), len(train), TasteRecipe(), seed
    )
    emb = torch.from_numpy(rich.astype(np.float32))
    prior, _ = calibrate_enrollment(model, CodePrior.from_model(model), calibration_users(emb, val_users))
    log(f"content/{family} seed {seed}")
    return {"population": f"content/{family}", "seed": seed, **compare(model, prior, emb, val_users, test_users, log)}


def demo(seed: int, log) -> dict:
    data = DemoTasteDataModule(seed=seed, num_val_users=10)
    data.setup()
    model, _ = fit_taste_model(data, data.hparams.num_train_users, TasteRecipe(), seed=seed)
    val_users = [(u.enroll, u.test) for u in data.validation_raters]
    test_users = [(u.enroll, u.test) for u in data.heldout]
    prior, _ = calibrate_enrollment(model, CodePrior.from_model(model), calibration_users(data.embeddings, val_users))
    log(f"demo seed {seed}")
    return {"population": "demo", "seed": seed, **compare(model, prior, data.embeddings, val_users, test_users, log)}


def write_report(runs: list[dict], out: str) -> None:
    lines = [
        "# Calibration of personal probabilities: where the temperature comes from",
        "",
        "Made by `scripts/bench_taste_calibration.py`. Held-out raters enrolled from n pairs, tested on their other",
        "pairs. ECE (10 bins, top-label) over all raters' test pairs, mean over seeds "
        f"{sorted({r['seed'] for r in runs})}; [95 % bootstrap over raters, per seed]. Accuracy does not depend on T.",
        "",
    ]
    for population in dict.fromkeys(r["population"] for r in runs):
        group = [r for r in runs if r["population"] == population]
        lines += [f"## {population}", "", "| raters | n | accuracy | " + " | ".join(group[0]["test/8"]["methods"])]
        lines[-1] += " | T (validation / cohort) |"
        lines.append("|---|---|---|" + "---|" * (len(group[0]["test/8"]["methods"]) + 1))
        for cohort in ("test", "validation"):
            for n in COUNTS:
                cells = [r[f"{cohort}/{n}"] for r in group]
                acc = np.mean([c["methods"]["validation T"]["accuracy"] for c in cells])
                row = f"| {cohort} | {n} | {acc:.3f} |"
                for method in cells[0]["methods"]:
                    values = [c["methods"][method] for c in cells]
                    ci = "; ".join(f"{v['ece_ci95'][0]:.3f}-{v['ece_ci95'][1]:.3f}" for v in values)
                    row += f" {np.mean([v['ece'] for v in values]):.3f} [{ci}] |"
                temps = ", ".join(f"{r['validation_temperature']:.2f} / {c['cohort_temperature']:.2f}"
                                  for r, c in zip(group, cells, strict=True))  # fmt: skip
                lines.append(row + f" {temps} |")
        settings = ", ".join(
            f"T₀ {r['per_rater_settings']['t0']:.2f} τ {r['per_rater_settings']['tau']}" for r in group
        )
        lines += ["", f"Per-rater shrinkage chosen on validation raters: {settings}.", ""]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="gaussian", choices=("gaussian", "sparse"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks/bench_taste_calibration_cpu"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    runs = [content(seed, args.family, log) for seed in args.seeds] + [demo(seed, log) for seed in args.seeds]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"runs": runs, "log": lines}, indent=1))
    write_report(runs, args.out)
    print(f"wrote {args.out}.json, .md")


if __name__ == "__main__":
    main()
