"""Personal taste on raters the model was not built around: mmpref vs two plain baselines, learning curves.

Populations (both over the shipped demo images and their EfficientNet-Lite0 embeddings, ``assets/demo_taste``):

* ``content``: :class:`mmpref.vision.taste.population.ContentTastePopulation` — tastes over what the photo shows and
  how it looks; training raters from taste clusters, test raters from a continuous low-rank Gaussian (or ``sparse``),
  rationality varying by rater. 40 training raters (150 + 20 validation pairs each), 10 validation raters (settings
  are chosen on them), 24 test raters (32 enrollment + 200 test pairs each).
* ``demo``: the demo population (:class:`DemoTasteDataModule`, 60 training / 20 held-out raters), for the
  no-regression check.

Methods: the baselines (a) population logistic model + per-user ridge correction on the residual, (b) a k = 8 user
space from the SVD of training raters' linear weights with a Gaussian prior; mmpref with the shipped recipe and
with each change of the default path added in turn (the ablation). Prior strengths of all methods are chosen on the
validation raters. Intervals: 95 % over test raters (mean ± 1.96 · sd / √U).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_taste.py [--family gaussian|sparse] [--seeds 0 1]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmpref.reward.metrics import PairwiseCalibrationError  # noqa: E402
from mmpref.reward.trainers import quiet_lightning  # noqa: E402
from mmpref.vision.demo_data import UserPairs, load_demo_items, make_demo_image  # noqa: E402
from mmpref.vision.taste.active import choose_pairs  # noqa: E402
from mmpref.vision.taste.baselines import Baselines, sigmoid  # noqa: E402
from mmpref.vision.taste.features import colour_statistics  # noqa: E402
from mmpref.vision.taste.model import CodePrior, enroll, predict_pairs  # noqa: E402
from mmpref.vision.taste.population import ContentTastePopulation, bayes_reference  # noqa: E402
from mmpref.vision.taste.system import DemoTasteDataModule, PairsTasteDataModule  # noqa: E402
from mmpref.vision.taste.train import CalibrationUser, TasteRecipe, calibrate_enrollment, fit_taste_model  # noqa: E402

COUNTS = (0, 1, 2, 4, 8, 16, 32)
SCALE = 1.2


def accuracy(prob: np.ndarray, label: np.ndarray) -> float:
    decided = label != 0.5
    return float(((prob > 0.5) == (label > 0.5))[decided].mean())


def summarise(per_user: dict[int, list[float]], ece: dict[int, float] | None = None) -> list[dict]:
    rows = []
    for n, values in per_user.items():
        v = np.asarray(values)
        half = 1.96 * v.std(ddof=1) / np.sqrt(len(v))
        row = {"n": n, "accuracy": float(v.mean()), "ci95": float(half)}
        if ece is not None:
            row["ece"] = ece[n]
        rows.append(row)
    return rows


def curve(predict, users: list[tuple[UserPairs, UserPairs]], counts=COUNTS) -> list[dict]:
    """predict(enroll, n, test) → P(a ≻ b) on test; accuracy per user, ECE over all test pairs."""
    per_user, ece = {n: [] for n in counts}, {}
    for n in counts:
        metric = PairwiseCalibrationError()
        for enroll_pairs, test in users:
            prob = predict(enroll_pairs, n, test)
            per_user[n].append(accuracy(prob, test.label))
            metric.update(torch.from_numpy(np.asarray(prob)), torch.from_numpy(test.label))
        ece[n] = float(metric.compute())
    return summarise(per_user, ece)


def fmt(rows: list[dict]) -> str:
    return " ".join(f"{r['accuracy']:.3f}" for r in rows)


def pick(options: dict, score) -> tuple:
    """The option with the best validation score."""
    results = {k: score(v) for k, v in options.items()}
    best = max(results, key=results.get)
    return best, results


def mmpref_predictor(model, prior: CodePrior, emb: torch.Tensor, moderated: bool):
    def predict(enroll_pairs: UserPairs, n: int, test: UserPairs) -> np.ndarray:
        profile = enroll(
            model, prior, emb[enroll_pairs.a[:n]], emb[enroll_pairs.b[:n]], torch.from_numpy(enroll_pairs.label[:n])
        )
        if moderated:
            return predict_pairs(model, profile, emb[test.a], emb[test.b], prior.temperature)
        code = torch.from_numpy(profile.code).float()
        with torch.no_grad():
            margin = model.score(emb[test.a], code) - model.score(emb[test.b], code)
        return torch.sigmoid(margin).double().numpy()

    return predict


def calibration_users(emb: torch.Tensor, users: list[tuple[UserPairs, UserPairs]]) -> list[CalibrationUser]:
    return [
        CalibrationUser(emb[e.a], emb[e.b], torch.from_numpy(e.label), emb[t.a], emb[t.b], torch.from_numpy(t.label))
        for e, t in users
    ]


def run_mmpref_variants(emb_np, train, val_pairs, val_users, test_users, seed, variants, log) -> dict:
    emb = torch.from_numpy(emb_np.astype(np.float32))
    out = {}
    cal = calibration_users(emb, val_users)
    trained = {}
    for name, spec in variants.items():
        key = (spec["early_stopping"], spec["weight_decay"], spec.get("max_epochs", 60))
        if key not in trained:
            recipe = TasteRecipe(
                early_stopping=spec["early_stopping"],
                weight_decay=spec["weight_decay"],
                max_epochs=spec.get("max_epochs", 60),
            )
            start = time.perf_counter()
            data = PairsTasteDataModule(emb_np, train, val_pairs, seed=seed)
            model, summary = fit_taste_model(data, len(train), recipe, seed=seed)
            summary["seconds"] = time.perf_counter() - start
            trained[key] = (model, summary)
            log(
                f"  trained {key}: {summary['epochs_run']} epochs (best {summary['best_epoch']}), "
                f"{summary['seconds']:.0f}s"
            )
        model, summary = trained[key]
        prior = CodePrior.from_model(model)
        report = None
        if spec.get("empirical_bayes"):
            prior, report = calibrate_enrollment(model, prior, cal)
            if not spec.get("temperature"):
                prior = CodePrior(prior.mean, prior.covariance, 1.0)
        result = curve(mmpref_predictor(model, prior, emb, spec.get("moderated", False)), test_users)
        val = curve(mmpref_predictor(model, prior, emb, spec.get("moderated", False)), val_users, counts=(8,))
        out[name] = {"curve": result, "val_accuracy_8": val[0]["accuracy"], "train": summary, "calibration": report}
        log(
            f"  {name}: acc@8 {result[4]['accuracy']:.3f} ± {result[4]['ci95']:.3f}, ece@8 {result[4]['ece']:.3f} "
            f"curve {fmt(result)}"
        )
        out[name]["_model"], out[name]["_prior"] = model, prior
    return out


VARIANTS = {
    "shipped (25 epochs, wd 1e-4)": {"early_stopping": False, "weight_decay": 1e-4, "max_epochs": 25},
    "+ early stopping": {"early_stopping": True, "weight_decay": 1e-4},
    "+ weight decay 1e-2": {"early_stopping": True, "weight_decay": 1e-2},
    "+ prior strength by validation (EB)": {"early_stopping": True, "weight_decay": 1e-2, "empirical_bayes": True},
    "+ moderated + temperature": {
        "early_stopping": True,
        "weight_decay": 1e-2,
        "empirical_bayes": True,
        "temperature": True,
        "moderated": True,
    },
}


def colour_features(items) -> np.ndarray:
    """Colour statistics of the demo images (computed once, cached under runs/bench_taste/)."""
    path = ROOT / "runs/bench_taste" / f"colour16_{items.seed}_{len(items.names)}.npy"
    if path.is_file():
        return np.load(path)
    stats = np.stack([colour_statistics(make_demo_image(i, items.seed)[1]) for i in range(len(items.names))])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, stats)
    return stats


DEFAULT = "+ colour statistics features (default)"
RICH = {
    DEFAULT: {
        "early_stopping": True,
        "weight_decay": 1e-2,
        "empirical_bayes": True,
        "temperature": True,
        "moderated": True,
    },
}


def content_data(seed: int, family: str) -> tuple:
    """The content-taste population's items, generator, training / validation pairs and raters (fixed draw order)."""
    items = load_demo_items()
    pop = ContentTastePopulation(items, test_family=family, seed=seed, scale=SCALE)
    train = [pop.pairs(pop.train, u, 150) for u in range(len(pop.train.beta))]
    val_pairs = [pop.pairs(pop.train, u, 20) for u in range(len(pop.train.beta))]
    val_users = [(pop.pairs(pop.val, u, 32), pop.pairs(pop.val, u, 100)) for u in range(len(pop.val.beta))]
    test_users = [(pop.pairs(pop.test, u, 32), pop.pairs(pop.test, u, 200)) for u in range(len(pop.test.beta))]
    return items, pop, train, val_pairs, val_users, test_users


def content_population(seed: int, family: str, log) -> dict:
    items, pop, train, val_pairs, val_users, test_users = content_data(seed, family)
    # a pool of candidate pairs per test rater for active enrollment, labelled only when asked
    result = {"population": f"content/{family}", "seed": seed}
    emb = items.embeddings

    # References from the generator.
    mean, cov = pop.test_prior
    ceiling = [float(np.maximum(t.true_prob, 1 - t.true_prob).mean()) for _, t in test_users]
    result["noise_ceiling"] = float(np.mean(ceiling))
    result["bayes_reference"] = summarise(
        {
            n: [
                bayes_reference(pop.features, mean, cov, pop.test.beta[u], e, n, t)
                for u, (e, t) in enumerate(test_users)
            ]
            for n in COUNTS
        }
    )
    # the same, knowing the true features but only the training raters' prior (what training data can teach)
    train_mean, train_cov = pop.train.weights.mean(0), np.cov(pop.train.weights, rowvar=False)
    result["oracle_features_training_prior"] = summarise(
        {
            n: [
                bayes_reference(pop.features, train_mean, train_cov, pop.test.beta[u], e, n, t)
                for u, (e, t) in enumerate(test_users)
            ]
            for n in COUNTS
        }
    )
    log(f"  oracle features + training raters' prior: {fmt(result['oracle_features_training_prior'])}")
    log(
        f"content/{family} seed {seed}: noise ceiling {result['noise_ceiling']:.3f}, Bayes ref "
        f"{fmt(result['bayes_reference'])}"
    )
    result.update(run_baselines(emb, train, val_users, test_users, log))
    rich = np.concatenate([emb, colour_features(items)], 1)
    result.update({f"{k} (+colour)": v for k, v in run_baselines(rich, train, val_users, test_users, log).items()})
    variants = run_mmpref_variants(emb, train, val_pairs, val_users, test_users, seed, VARIANTS, log)
    variants.update(run_mmpref_variants(rich, train, val_pairs, val_users, test_users, seed, RICH, log))
    default = variants[DEFAULT]
    result["active"] = run_active(default["_model"], default["_prior"], rich, pop, seed, log)
    for v in variants.values():
        v.pop("_model", None), v.pop("_prior", None)
    result["mmpref"] = variants
    return result


def run_baselines(emb, train, val_users, test_users, log) -> dict:
    base = Baselines(emb, train)
    val_score = lambda f: np.mean([r["accuracy"] for r in curve(f, val_users, counts=(4, 8, 16))])  # noqa: E731
    lam_pop, _ = pick(
        {lam: lam for lam in (0.1, 1.0, 10.0)},
        lambda lam: (
            base.fit_population(lam),
            np.mean([accuracy(base.ridge_predict(e, 0, t, 1.0), t.label) for e, t in val_users]),
        )[1],
    )
    base.fit_population(lam_pop)
    lam, ridge_val = pick(
        {v: v for v in (0.3, 1.0, 3.0, 10.0, 30.0)},
        lambda v: val_score(lambda e, n, t: base.ridge_predict(e, n, t, v)),
    )
    ridge = curve(lambda e, n, t: base.ridge_predict(e, n, t, lam), test_users)
    best_space = None
    for lam_user in (1.0, 3.0, 10.0):
        base.fit_user_space(lam_user)
        scale, scores = pick(
            {s: s for s in (0.25, 1.0, 4.0)}, lambda s: val_score(lambda e, n, t: base.lowrank_predict(e, n, t, s))
        )
        if best_space is None or scores[scale] > best_space[0]:
            best_space = (scores[scale], lam_user, scale)
    _, lam_user, scale = best_space
    base.fit_user_space(lam_user)
    lowrank = curve(lambda e, n, t: base.lowrank_predict(e, n, t, scale), test_users)
    log(
        f"  ridge (λ_pop {lam_pop}, λ {lam}): {fmt(ridge)}; low-rank (λ_user {lam_user}, scale {scale}): "
        f"{fmt(lowrank)}"
    )
    return {
        "ridge": {"curve": ridge, "settings": {"lambda_population": lam_pop, "lambda_user": lam}},
        "lowrank": {"curve": lowrank, "settings": {"lambda_user_weights": lam_user, "prior_scale": scale, "k": 8}},
    }


def run_active(model, prior, emb_np, pop, seed, log, n_ask: int = 8, pool_items: int = 40) -> dict:
    """8 chosen vs 8 random pairs from a pool of each test rater's images (all pairs among ``pool_items``)."""
    emb = torch.from_numpy(emb_np.astype(np.float32))
    rng = np.random.default_rng([seed, 7])
    chosen_acc, random_acc = [], []
    for u in range(len(pop.test.beta)):
        items = rng.choice(len(emb), pool_items, replace=False)
        weights, beta = pop.test.weights[u], pop.test.beta[u]
        utility = pop.features @ weights

        def answer(a: int, b: int, beta: float = beta, utility: np.ndarray = utility) -> float:
            return float(rng.random() < sigmoid(beta * (utility[a] - utility[b])))

        test = pop.pairs(pop.test, u, 200)
        picked = choose_pairs(model, prior, emb, items, n_ask, answer=answer)
        profile = enroll(model, prior, emb[picked.a], emb[picked.b], torch.tensor(picked.label, dtype=torch.float32))
        chosen_acc.append(accuracy(predict_pairs(model, profile, emb[test.a], emb[test.b]), test.label))
        i, j = np.triu_indices(pool_items, 1)
        k = rng.choice(len(i), n_ask, replace=False)
        a, b = items[i[k]], items[j[k]]
        labels = torch.tensor([answer(x, y) for x, y in zip(a, b, strict=True)], dtype=torch.float32)
        profile = enroll(model, prior, emb[a], emb[b], labels)
        random_acc.append(accuracy(predict_pairs(model, profile, emb[test.a], emb[test.b]), test.label))
    diff = np.asarray(chosen_acc) - np.asarray(random_acc)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
    out = {
        "chosen": float(np.mean(chosen_acc)),
        "random": float(np.mean(random_acc)),
        "difference": float(diff.mean()),
        "difference_ci95": float(half),
        "pool_items": pool_items,
        "asked": n_ask,
    }
    log(f"  active: chosen {out['chosen']:.3f} vs random {out['random']:.3f}: {out['difference']:+.3f} ± {half:.3f}")
    return out


def demo_population(seed: int, log) -> dict:
    data = DemoTasteDataModule(seed=seed, num_val_users=10)
    data.setup()
    emb = data.embeddings
    test_users = [(u.enroll, u.test) for u in data.heldout]
    val_users = [(u.enroll, u.test) for u in data.validation_raters]
    ceiling = float(np.mean([np.maximum(t.true_prob, 1 - t.true_prob).mean() for _, t in test_users]))
    out = {"population": "demo", "seed": seed, "noise_ceiling": ceiling, "mmpref": {}}
    for name, recipe in {
        "shipped (25 epochs, wd 1e-4)": TasteRecipe(early_stopping=False, weight_decay=1e-4, max_epochs=25),
        "default": TasteRecipe(),
    }.items():
        model, summary = fit_taste_model(data, data.hparams.num_train_users, recipe, seed=seed)
        prior, report = CodePrior.from_model(model), None
        moderated = name == "default"
        if moderated:
            prior, report = calibrate_enrollment(model, prior, calibration_users(emb, val_users))
        result = curve(mmpref_predictor(model, prior, emb, moderated), test_users)
        out["mmpref"][name] = {"curve": result, "train": summary, "calibration": report}
        log(
            f"demo seed {seed} {name}: acc@8 {result[4]['accuracy']:.3f} ± {result[4]['ci95']:.3f}, "
            f"ece@8 {result[4]['ece']:.3f} ({summary['epochs_run']} epochs)"
        )
    # the default with colour statistics appended to the embeddings
    rich = torch.from_numpy(np.concatenate([emb.numpy(), colour_features(data.items)], 1))
    data.embeddings = rich
    model, summary = fit_taste_model(data, data.hparams.num_train_users, TasteRecipe(), seed=seed)
    prior, report = calibrate_enrollment(model, CodePrior.from_model(model), calibration_users(rich, val_users))
    result = curve(mmpref_predictor(model, prior, rich, True), test_users)
    out["mmpref"]["default + colour statistics"] = {"curve": result, "train": summary, "calibration": report}
    log(
        f"demo seed {seed} default + colour: acc@8 {result[4]['accuracy']:.3f} ± {result[4]['ci95']:.3f}, "
        f"ece@8 {result[4]['ece']:.3f} ({summary['epochs_run']} epochs)"
    )
    data.embeddings = emb
    out.update(run_baselines(emb.numpy(), data.train_users_pairs, val_users, test_users, log))
    return out


def _mean_curve(rows_per_seed: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean accuracy over seeds and the mean of the per-seed 95 % half-widths (over raters)."""
    acc = np.array([[r["accuracy"] for r in rows] for rows in rows_per_seed])
    half = np.array([[r.get("ci95", 0.0) for r in rows] for rows in rows_per_seed])
    return acc.mean(0), half.mean(0)


def write_report(runs: list[dict], out: str) -> None:
    """Markdown tables and a learning-curve plot from the runs (``out``.md, ``out``.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    content = [r for r in runs if r["population"].startswith("content")]
    demo = [r for r in runs if r["population"] == "demo"]
    lines = [
        "# Personal taste on raters the model was not built around",
        "",
        "Made by `scripts/bench_taste.py` (CPU). Accuracy of held-out raters' other pairs after enrolling each from n",
        "labelled pairs; ± = 95 % interval over raters (mean of the per-seed intervals), means over seeds "
        f"{sorted({r['seed'] for r in runs})}.",
        "",
    ]
    if content:
        name = content[0]["population"]
        lines += [
            f"## Content-taste population ({name}): 40 training raters (clusters), 24 test raters of "
            f"{'the same family' if name.endswith('clusters') else 'another family'}",
            "",
        ]
        methods = {
            "mmpref default (early stop, EB prior, temperature, colour stats)": [
                r["mmpref"][DEFAULT]["curve"] for r in content
            ],
            "mmpref shipped recipe": [r["mmpref"]["shipped (25 epochs, wd 1e-4)"]["curve"] for r in content],
            "baseline: per-user ridge (EfficientNet-Lite0)": [r["ridge"]["curve"] for r in content],
            "baseline: low-rank k=8 (EfficientNet-Lite0)": [r["lowrank"]["curve"] for r in content],
            "baseline: per-user ridge (+colour stats)": [r["ridge (+colour)"]["curve"] for r in content],
            "baseline: low-rank k=8 (+colour stats)": [r["lowrank (+colour)"]["curve"] for r in content],
            "reference: true features, training raters' prior": [r["oracle_features_training_prior"] for r in content],
            "reference: Bayes (true features and test prior)": [r["bayes_reference"] for r in content],
        }
        lines += ["| method | " + " | ".join(f"n={n}" for n in COUNTS) + " |", "|---|" + "---|" * len(COUNTS)]
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for label, rows in methods.items():
            acc, half = _mean_curve(rows)
            lines.append(
                f"| {label} | " + " | ".join(f"{a:.3f} ± {h:.3f}" for a, h in zip(acc, half, strict=True)) + " |"
            )
            x = [max(n, 0.5) for n in COUNTS]
            style = "k--" if label.startswith("reference") else "o-"
            ax.plot(x, acc, style if "Bayes" not in label else "k:", label=label, lw=1.2, ms=3)
            if label.startswith("mmpref default"):
                ax.fill_between(x, acc - half, acc + half, alpha=0.2)
        ceiling = float(np.mean([r["noise_ceiling"] for r in content]))
        ax.axhline(ceiling, color="grey", lw=1, label=f"noise ceiling {ceiling:.3f}")
        ax.set_xscale("log", base=2)
        ax.set_xticks([max(n, 0.5) for n in COUNTS], [str(n) for n in COUNTS])
        ax.set_xlabel("enrollment pairs from the new rater")
        ax.set_ylabel("accuracy on their other pairs")
        same = content[0]["population"].endswith("clusters")
        ax.set_title(f"Content-taste population, held-out raters of {'the same' if same else 'another'} family")
        ax.legend(fontsize=6.5, loc="upper left")
        fig.tight_layout()
        fig.savefig(f"{out}.png", dpi=120)
        plt.close(fig)
        lines += [
            "",
            f"Noise ceiling {ceiling:.3f}. Plot: `{Path(out).name}.png`.",
            "",
            "### Ablation at 8 pairs (each row adds one change to the row above)",
            "",
            "| variant | accuracy @8 | ECE @8 | val raters @8 | epochs (best) |",
            "|---|---|---|---|---|",
        ]
        for variant in content[0]["mmpref"]:
            rows = [r["mmpref"][variant] for r in content]
            acc = np.mean([v["curve"][4]["accuracy"] for v in rows])
            half = np.mean([v["curve"][4]["ci95"] for v in rows])
            ece = np.mean([v["curve"][4]["ece"] for v in rows])
            val = np.mean([v["val_accuracy_8"] for v in rows])
            epochs = ", ".join(f"{v['train']['epochs_run']} ({v['train']['best_epoch']})" for v in rows)
            lines.append(f"| {variant} | {acc:.3f} ± {half:.3f} | {ece:.3f} | {val:.3f} | {epochs} |")
        act = [r["active"] for r in content]
        lines += [
            "",
            "### Active enrollment (8 chosen vs 8 random pairs from a pool of 40 of the rater's images)",
            "",
            "| seed | chosen | random | difference (95 % over raters) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['seed']} | {a['chosen']:.3f} | {a['random']:.3f} | {a['difference']:+.3f} ± "
            f"{a['difference_ci95']:.3f} |"
            for r, a in zip(content, act, strict=True)
        ]
    if demo:
        lines += [
            "",
            "## Demo population (60 training / 20 held-out raters, same family)",
            "",
            "| method | n=8 | ECE @8 |",
            "|---|---|---|",
        ]
        for variant in demo[0]["mmpref"]:
            rows = [r["mmpref"][variant]["curve"][4] for r in demo]
            lines.append(
                f"| mmpref {variant} | {np.mean([x['accuracy'] for x in rows]):.3f} ± "
                f"{np.mean([x['ci95'] for x in rows]):.3f} | {np.mean([x['ece'] for x in rows]):.3f} |"
            )
        for base in ("ridge", "lowrank"):
            rows = [r[base]["curve"][4] for r in demo]
            lines.append(
                f"| baseline {base} | {np.mean([x['accuracy'] for x in rows]):.3f} ± "
                f"{np.mean([x['ci95'] for x in rows]):.3f} | {np.mean([x['ece'] for x in rows]):.3f} |"
            )
        lines.append(f"\nNoise ceiling {np.mean([r['noise_ceiling'] for r in demo]):.3f}.")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="gaussian", choices=("gaussian", "sparse", "clusters"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks/bench_taste_cpu"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the .json")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(Path(f"{args.out}.json").read_text())["runs"], args.out)
        return
    torch.set_num_threads(1)
    quiet_lightning()
    lines = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    runs = [content_population(seed, args.family, log) for seed in args.seeds]
    if not args.skip_demo:
        runs += [demo_population(seed, log) for seed in args.seeds]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"runs": runs, "log": lines}, indent=1))
    write_report(runs, args.out)
    print(f"wrote {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
