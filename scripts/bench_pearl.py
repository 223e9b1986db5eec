"""Benchmark: PEARL cross-task label transfer on Meta-World v3, and target policies from transferred labels.

Stages (each merges its results into ``docs/benchmarks/bench_pearl_cpu.json``, or ``--out``, and rewrites the
markdown):

* ``dev``: the fused-GW weight α is chosen on *development* task pairs that share no task with the evaluation pairs
  (door-open → door-close, faucet-open → faucet-close, plate-slide → plate-slide-back), so no evaluation target label
  is looked at to choose it;
* ``transfer``: transferred-label accuracy on the four evaluation pairs for random, nearest-neighbour (shared
  features), plain GW (exact, entropic ε = 0.01), the shared-feature Bradley-Terry baseline and mmpref's robust
  transfer, over three segment subsamples; target returns are used only to score;
* ``ablation``: plain GW with restarts and the direction check; fused GW without the direction check;
* ``timing``: GW / fused-GW wall-clock at 1,000 × 1,000 segments;
* ``policy``: per target task, a robust Gaussian reward on the target's segments from (a) transferred labels only,
  (b) the target's true labels → filtered BC on the target's unlabelled trajectories → success rate; and BC on all
  trajectories (no labels) as the floor;
* ``policy_scarce``: the same on a hard pool, the target's unlabelled trajectories with only ``--scarce-keep`` each
  of the ``--scarce-thin`` behaviours (default 2 of expert0 and of expert0.3), filtered BC on the top
  ``--scarce-top-fraction`` (default 5 %); baselines BC on all of the pool and a random filter of the same size.

``--out`` writes the JSON and markdown elsewhere (a side run must not overwrite the committed multi-seed results).

Data: per task 245 trajectories of 200 steps (35 each of 7 behaviours, :mod:`mmpref.control.pearl.data`), cached
in ``runs/pearl``; segments of 50 steps; source = even trajectories, target = odd; 480 segments per side.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python scripts/bench_pearl.py --stage dev transfer ablation timing policy
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

EVAL_PAIRS = [
    ("window-open-v3", "window-close-v3"),
    ("button-press-v3", "button-press-topdown-v3"),
    ("button-press-v3", "button-press-wall-v3"),
    ("drawer-open-v3", "drawer-close-v3"),
]
DEV_PAIRS = [
    ("door-open-v3", "door-close-v3"),
    ("faucet-open-v3", "faucet-close-v3"),
    ("plate-slide-v3", "plate-slide-back-v3"),
]
ALPHAS = (0.1, 0.5, 0.9)
CACHE = Path("runs/pearl")
DATA_SEED = [0]  # seed of the rollouts (``--data-seed``); 1 gives fresh, independent trajectories
OUT = Path("docs/benchmarks/bench_pearl_cpu")


def side(task: str, parity: int, n: int, seed: int, stride: int = 50) -> dict[str, np.ndarray]:
    """Segments of one half (parity 0 = even trajectories = source side, 1 = odd = target side), n subsampled."""
    from mmpref.control.pearl.data import load_or_generate, segment_arrays

    data = load_or_generate(task, CACHE, 35, 200, DATA_SEED[0])
    segments = segment_arrays(data, 50, stride, trajectories=np.arange(parity, len(data.observations), 2))
    idx = np.random.default_rng(1000 * seed + parity).choice(len(segments["ret"]), n, replace=False)
    return {k: v[idx] for k, v in segments.items()}


def problem(source: str, target: str, n: int, seed: int, stride: int = 50) -> dict[str, Any]:
    """Costs, features and labels of one (source, target) pair; target returns kept apart for scoring."""
    from mmpref.control.pearl import transfer as pearl

    s, t = side(source, 0, n, seed, stride), side(target, 1, n, seed, stride)
    f_s = pearl.zscore(pearl.summary_features(s["obs"], s["act"]))
    f_t = pearl.zscore(pearl.summary_features(t["obs"], t["act"]))
    return {
        "labels": pearl.label_matrix(s["ret"]),
        "f_s": f_s,
        "f_t": f_t,
        "cross": pearl.distance_matrix(f_s, f_t),
        "c_s": pearl.distance_matrix(pearl.flat_features(s["obs"], s["act"])),
        "c_t": pearl.distance_matrix(pearl.flat_features(t["obs"], t["act"])),
        "target_returns": t["ret"],
        "target": t,
    }


def robust(p: dict[str, Any], alpha: float, restarts: int, seed: int) -> Any:
    from mmpref.control.pearl import transfer as pearl

    anchor = pearl.FeatureBradleyTerry().fit(p["f_s"], p["labels"]).score(p["f_t"])
    return pearl.robust_coupling(
        p["cross"], p["c_s"], p["c_t"], p["labels"], anchor, alpha=alpha, epsilon=0.01, restarts=restarts, seed=seed
    )


def stage_dev(results: dict[str, Any], n: int) -> None:
    from mmpref.control.pearl import transfer as pearl

    table: dict[str, dict[str, float]] = {}
    for source, target in DEV_PAIRS:
        p = problem(source, target, n, 0)
        row = {}
        for alpha in ALPHAS:
            result = robust(p, alpha, 1, 0)
            row[str(alpha)] = pearl.transfer_accuracy(result.labels, p["target_returns"])
        table[f"{source}->{target}"] = row
        logging.info("dev %s -> %s: %s", source, target, row)
    means = {str(a): float(np.mean([row[str(a)] for row in table.values()])) for a in ALPHAS}
    results["dev"] = {"pairs": table, "mean": means, "alpha": float(max(means, key=means.get))}


def stage_transfer(results: dict[str, Any], n: int, seeds: list[int], restarts: int) -> None:
    from mmpref.control.pearl import coupling
    from mmpref.control.pearl import transfer as pearl

    alpha = results.get("dev", {}).get("alpha", 0.5)
    rows: dict[str, Any] = {}
    for source, target in EVAL_PAIRS:
        key = f"{source}->{target}"
        rows[key] = {}
        for seed in seeds:
            p = problem(source, target, n, seed)
            acc = {}
            ret = p["target_returns"]

            def score(plan: np.ndarray, p: dict[str, Any] = p) -> float:
                return pearl.transfer_accuracy(pearl.transfer_labels(plan, p["labels"]), p["target_returns"])

            acc["random"] = score(coupling.random_coupling(n, n, np.random.default_rng(seed)))
            acc["nearest"] = score(coupling.nearest_coupling(p["cross"]))
            start = time.perf_counter()
            acc["gw_exact"] = score(coupling.gw_coupling(p["c_s"], p["c_t"], "exact")[0])
            time_exact = time.perf_counter() - start
            start = time.perf_counter()
            acc["gw_entropic"] = score(coupling.gw_coupling(p["c_s"], p["c_t"], "entropic", 0.01)[0])
            time_entropic = time.perf_counter() - start
            model = pearl.FeatureBradleyTerry().fit(p["f_s"], p["labels"])
            acc["shared_feature_bt"] = pearl.transfer_accuracy(model.pair_labels(p["f_t"]), ret)
            start = time.perf_counter()
            result = robust(p, alpha, restarts, seed)
            acc["mmpref_robust"] = pearl.transfer_accuracy(result.labels, ret)
            acc["robust_seconds"] = time.perf_counter() - start
            acc["gw_exact_seconds"], acc["gw_entropic_seconds"] = time_exact, time_entropic
            acc["flipped"] = result.flipped
            acc["anchor_spearman"] = result.agreement
            acc["restart_objectives"] = list(result.objectives)
            # Same-start-time subset: removes the "later segments earn more" confound (pearl-notes pitfall 6).
            same = p["target"]["start"][:, None] == p["target"]["start"][None]
            acc["mmpref_robust_same_start"] = subset_accuracy(result.labels, ret, same)
            acc["shared_feature_bt_same_start"] = subset_accuracy(model.pair_labels(p["f_t"]), ret, same)
            rows[key][str(seed)] = acc
            logging.info(
                "transfer %s seed %d: %s", key, seed, {k: v for k, v in acc.items() if k != "restart_objectives"}
            )
            if DATA_SEED[0] == 0:
                np.save(CACHE / f"yhat_{target}_n{n}_seed{seed}.npy", result.labels)
    key = "transfer" if DATA_SEED[0] == 0 else f"transfer_data_seed{DATA_SEED[0]}"
    results[key] = {
        "data_seed": DATA_SEED[0],
        "alpha": alpha,
        "n": n,
        "seeds": seeds,
        "restarts": restarts,
        "pairs": rows,
    }


def subset_accuracy(labels: np.ndarray, ret: np.ndarray, subset: np.ndarray) -> float:
    """Accuracy as :func:`~mmpref.control.pearl.transfer.transfer_accuracy`, over pairs in ``subset`` ``[n, n]``."""
    diff = ret[:, None] - ret[None]
    keep = np.triu(np.abs(diff) > 0.1 * ret.std(), 1) & subset
    y = labels[keep]
    return float(np.mean(np.where(y == 0.5, 0.5, (y > 0.5) == (diff[keep] > 0))))


def stage_ablation(results: dict[str, Any], n: int, restarts: int) -> None:
    """Which part fixes what (subsample 0): plain entropic GW + restarts + the direction check (α = 1), and the
    fused plan without the direction check."""
    from mmpref.control.pearl import transfer as pearl

    alpha = results.get("dev", {}).get("alpha", 0.5)
    rows = {}
    for source, target in EVAL_PAIRS:
        p = problem(source, target, n, 0)
        anchor = pearl.FeatureBradleyTerry().fit(p["f_s"], p["labels"]).score(p["f_t"])
        ret = p["target_returns"]
        row = {}
        for name, a, check in (("gw_restarts_direction_check", 1.0, True), ("fused_no_direction_check", alpha, False)):
            result = pearl.robust_coupling(
                p["cross"], p["c_s"], p["c_t"], p["labels"], anchor if check else None, alpha=a, restarts=restarts
            )
            row[name] = pearl.transfer_accuracy(result.labels, ret)
            row[f"{name}_flipped"] = result.flipped
        rows[f"{source}->{target}"] = row
        logging.info("ablation %s -> %s: %s", source, target, row)
    results["ablation"] = {"alpha": alpha, "restarts": restarts, "pairs": rows}


def stage_timing(results: dict[str, Any], n: int) -> None:
    from mmpref.control.pearl import coupling
    from mmpref.control.pearl import transfer as pearl

    p = problem("window-open-v3", "window-close-v3", n, 0, stride=10)
    timings = {}
    for name, fn in {
        "gw_exact": lambda: coupling.gw_coupling(p["c_s"], p["c_t"], "exact"),
        "gw_entropic_0.01": lambda: coupling.gw_coupling(p["c_s"], p["c_t"], "entropic", 0.01),
        "fused_gw_entropic_0.01": lambda: coupling.fused_gw_coupling(p["cross"], p["c_s"], p["c_t"], 0.5, 0.01),
        "transfer_labels": lambda: pearl.transfer_labels(np.full((n, n), 1.0 / n**2), p["labels"]),
    }.items():
        start = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - start
        logging.info("timing %s at %d x %d: %.2f s", name, n, n, timings[name])
    results["timing"] = {"n": n, "seconds": timings, "device": "cpu (numpy backend); no GPU on this machine"}


def policy_target(target: str, n: int, episodes: int) -> tuple[dict[str, np.ndarray], Any, Callable[[Any], float]]:
    """The target's labelled segments (odd side, subsample 0), its cached task data and a success evaluator.

    The evaluator rolls a policy (sampling actions, seed k) out for ``episodes`` episodes of 200 steps with episode
    seeds 10 000 + k on one goal-varying env, and returns the fraction of episodes that succeeded.
    """
    from mmpref.control.envs import make_env
    from mmpref.control.pearl.data import load_or_generate
    from mmpref.control.segments import rollout

    t = side(target, 1, n, 0)
    data = load_or_generate(target, CACHE, 35, 200, 0)
    env = make_env(target, seed=123, goal_variation=True)

    def success(policy: Any) -> float:
        runs = [rollout(env, policy.numpy_policy(True, seed=k), 200, seed=10_000 + k) for k in range(episodes)]
        return float(np.mean([r.succeeded for r in runs]))

    return t, data, success


def filtered_bc_rows(
    target: str,
    n: int,
    t: dict[str, np.ndarray],
    data: Any,
    pool: np.ndarray,
    top_fraction: float,
    bc_seeds: list[int],
    success: Callable[[Any], float],
    stage: str,
) -> dict[str, dict[str, Any]]:
    """Filtered BC on the trajectories ``pool`` of ``data`` with a reward from transferred and from true labels.

    For each label source a robust Gaussian reward is fitted on the target segments ``t`` (seed 0; 4000 pairs, 10
    epochs, width 64), the top ``top_fraction`` of ``pool`` by predicted return is cloned once per BC seed, and the
    policy's success is measured. ``chosen_behaviours`` counts the chosen trajectories per behaviour (the ranking,
    hence the choice, does not depend on the BC seed).
    """
    from mmpref.control.pearl import transfer as pearl
    from mmpref.control.pearl.reward import fit_gaussian_reward, predicted_returns, reward_filtered_bc

    x = np.concatenate([t["obs"], t["act"]], -1).astype(np.float32)
    rows: dict[str, dict[str, Any]] = {}
    for name, labels in (
        ("transferred", np.load(CACHE / f"yhat_{target}_n{n}_seed0.npy")),
        ("true_labels", pearl.label_matrix(t["ret"])),
    ):
        start = time.perf_counter()
        system = fit_gaussian_reward(x, labels, n_pairs=4000, epochs=10, hidden=64)
        reward_acc = pearl.transfer_accuracy(pearl.label_matrix(predicted_returns(system, x)), t["ret"])
        per_seed = []
        for bc_seed in bc_seeds:
            policy, chosen = reward_filtered_bc(
                system, data.observations[pool], data.actions[pool], top_fraction, seed=bc_seed
            )
            per_seed.append(success(policy))
        rows[name] = {
            "success": float(np.mean(per_seed)),
            "success_per_bc_seed": per_seed,
            "reward_pair_accuracy_on_target_segments": reward_acc,
            "chosen_behaviours": np.bincount(data.behaviour[pool][chosen], minlength=7).tolist(),
            "seconds": time.perf_counter() - start,
        }
        logging.info("%s %s %s: %s", stage, target, name, rows[name])
    return rows


def stage_policy(results: dict[str, Any], n: int, episodes: int, top_fraction: float, bc_seeds: list[int]) -> None:
    from mmpref.control.bc import behaviour_cloning
    from mmpref.control.policies import GaussianPolicy

    rows = {}
    for _, target in EVAL_PAIRS:
        t, data, success = policy_target(target, n, episodes)
        odd = np.arange(1, len(data.observations), 2)
        row: dict[str, Any] = filtered_bc_rows(target, n, t, data, odd, top_fraction, bc_seeds, success, "policy")
        previous = results.get("policy", {}).get("targets", {}).get(target, {}).get("bc_all")
        if previous is None:  # BC on everything does not depend on the labels: kept from an earlier run if there
            policy = GaussianPolicy()
            obs, act = data.observations[odd].reshape(-1, 39), data.actions[odd].reshape(-1, 4)
            behaviour_cloning(policy, obs, act, epochs=10)
            previous = {"success": success(policy), "bc_seed": 0}
        row["bc_all"] = previous
        logging.info("policy %s bc_all: %s", target, row["bc_all"])
        rows[target] = row
    results["policy"] = {"episodes": episodes, "top_fraction": top_fraction, "bc_seeds": bc_seeds, "targets": rows}


def scarce_pool(
    behaviour: np.ndarray, candidates: np.ndarray, thin: tuple[int, ...], keep: int, seed: int = 0
) -> np.ndarray:
    """Sorted trajectory indices: ``keep`` random ones of each behaviour index in ``thin`` among ``candidates``, and
    every candidate of the other behaviours.

    The draw uses ``numpy.random.default_rng(seed)``, one thinned behaviour after the other in the order given, so
    the pool is fixed by the seed.
    """
    rng = np.random.default_rng(seed)
    candidates = np.asarray(candidates)
    kept = [candidates[~np.isin(behaviour[candidates], thin)]]
    for b in thin:
        of_b = candidates[behaviour[candidates] == b]
        if keep > len(of_b):
            raise ValueError(f"cannot keep {keep} trajectories of behaviour {b}: only {len(of_b)}")
        kept.append(rng.choice(of_b, keep, replace=False))
    return np.sort(np.concatenate(kept))


def stage_policy_scarce(
    results: dict[str, Any],
    n: int,
    episodes: int,
    top_fraction: float,
    bc_seeds: list[int],
    keep: int,
    thin: list[str],
    command: str,
) -> None:
    """:func:`stage_policy` on a hard pool: the odd trajectories with only ``keep`` each of the behaviours ``thin``
    (default expert0 / expert0.3; :func:`scarce_pool`, seed 0), so that BC on all of it should fail and the filter
    has to find the few strong ones. Baselines on the same pool, cloned per BC seed with the same cloning as
    filtered BC (:func:`mmpref.control.pearl.reward.clone_trajectories`): BC on all of it, and a random filter (a
    random subset of the filtered size drawn with ``default_rng(bc_seed)``).
    """
    from mmpref.control.pearl.data import BEHAVIOURS
    from mmpref.control.pearl.reward import clone_trajectories

    thinned = tuple(BEHAVIOURS.index(b) for b in thin)
    rows = {}
    for _, target in EVAL_PAIRS:
        t, data, success = policy_target(target, n, episodes)
        pool = scarce_pool(data.behaviour, np.arange(1, len(data.observations), 2), thinned, keep)
        row: dict[str, Any] = filtered_bc_rows(
            target, n, t, data, pool, top_fraction, bc_seeds, success, "policy_scarce"
        )
        size = sum(row["transferred"]["chosen_behaviours"])  # the filtered subset's size, as reward_filtered_bc chose
        obs, act = data.observations[pool], data.actions[pool]
        start = time.perf_counter()
        picks = [np.random.default_rng(s).choice(len(pool), size, replace=False) for s in bc_seeds]
        per_seed = [success(clone_trajectories(obs, act, c, seed=s)) for c, s in zip(picks, bc_seeds, strict=True)]
        row["random_filter"] = {
            "success": float(np.mean(per_seed)),
            "success_per_bc_seed": per_seed,
            "chosen_behaviours_per_bc_seed": [
                np.bincount(data.behaviour[pool][c], minlength=7).tolist() for c in picks
            ],
            "seconds": time.perf_counter() - start,
        }
        start = time.perf_counter()
        every = np.arange(len(pool))
        per_seed = [success(clone_trajectories(obs, act, every, seed=s)) for s in bc_seeds]
        row["bc_all"] = {
            "success": float(np.mean(per_seed)),
            "success_per_bc_seed": per_seed,
            "seconds": time.perf_counter() - start,
        }
        row["pool_behaviours"] = np.bincount(data.behaviour[pool], minlength=7).tolist()
        row["pool_size"], row["filtered_size"] = len(pool), size
        logging.info(
            "policy_scarce %s: %s", target, {k: row[k] for k in ("random_filter", "bc_all", "pool_behaviours")}
        )
        rows[target] = row
    results["policy_scarce"] = {
        "episodes": episodes,
        "top_fraction": top_fraction,
        "bc_seeds": bc_seeds,
        "keep": keep,
        "thinned": list(thin),
        "pool_seed": 0,
        "n": n,
        "command": command,
        "targets": rows,
    }


def stage_rrl(results: dict[str, Any], n: int) -> None:
    """Robust Gaussian reward vs a fixed-variance (plain Bradley-Terry) reward, both on the transferred labels."""
    from mmpref.control.pearl import transfer as pearl
    from mmpref.control.pearl.reward import fit_gaussian_reward, predicted_returns

    rows = {}
    for _, target in EVAL_PAIRS:
        t = side(target, 1, n, 0)
        x = np.concatenate([t["obs"], t["act"]], -1).astype(np.float32)
        labels = np.load(CACHE / f"yhat_{target}_n{n}_seed0.npy")
        row = {"transferred_labels": pearl.transfer_accuracy(labels, t["ret"])}
        for name, kwargs in (
            ("gaussian", {}),
            ("fixed_variance_bt", {"logvar_bounds": (-10.0, -10.0), "kl_weight": 0.0, "samples": 0}),
        ):
            accs = []
            for seed in (0, 1, 2):
                system = fit_gaussian_reward(x, labels, n_pairs=4000, epochs=10, hidden=64, seed=seed, **kwargs)
                accs.append(pearl.transfer_accuracy(pearl.label_matrix(predicted_returns(system, x)), t["ret"]))
            row[name] = accs
        rows[target] = row
        logging.info("rrl %s: %s", target, row)
    results["rrl"] = {"pairs": rows}


def write_markdown(results: dict[str, Any], out: Path = OUT) -> None:
    """Render ``results`` as markdown at ``out`` + ``.md`` (one section per stage present)."""
    lines = [
        "# PEARL cross-task label transfer on Meta-World v3 (CPU)",
        "",
        f"Reproduce: `{results.get('command', '')}`. machine: {results['machine']}",
        "",
    ]
    if "dev" in results:
        dev = results["dev"]
        lines += [
            "## Choosing α without evaluation labels (development pairs)",
            "",
            "| dev pair | " + " | ".join(f"α={a}" for a in dev["mean"]) + " |",
            "|---|" + "---|" * len(dev["mean"]),
        ]
        for pair, row in dev["pairs"].items():
            lines.append(f"| {pair} | " + " | ".join(f"{100 * v:.1f}" for v in row.values()) + " |")
        lines += ["| mean | " + " | ".join(f"{100 * v:.1f}" for v in dev["mean"].values()) + " |", ""]
        lines += [f"chosen α = {dev['alpha']} (then fixed for every evaluation pair)", ""]
        if "copied_from" in dev:
            lines += [f"(this development-pair result was copied from `{dev['copied_from']}`, not rerun)", ""]
    for key in sorted(k for k in results if k.startswith("transfer")):
        tr = results[key]
        methods = ["random", "nearest", "gw_exact", "gw_entropic", "shared_feature_bt", "mmpref_robust"]
        lines += [
            f"## Transferred-label accuracy (%), rollout seed {tr.get('data_seed', 0)}, N = {tr['n']} per side, "
            f"mean (min–max) over subsamples {tr['seeds']}",
            "",
            f"mmpref_robust = entropic fused GW (α = {tr['alpha']}, ε = 0.01), {tr['restarts']} restarts keeping the "
            "lowest objective, direction check against the shared-feature reward fitted on source labels.",
            "",
            "| pair | " + " | ".join(methods) + " | flips | robust s |",
            "|---|" + "---|" * (len(methods) + 2),
        ]
        means = {m: [] for m in methods}
        for pair, seeds in tr["pairs"].items():
            cells = []
            for m in methods:
                vals = [100 * s[m] for s in seeds.values()]
                means[m].append(np.mean(vals))
                cells.append(f"{np.mean(vals):.1f} ({min(vals):.0f}–{max(vals):.0f})")
            flips = sum(bool(s["flipped"]) for s in seeds.values())
            secs = np.mean([s["robust_seconds"] for s in seeds.values()])
            lines.append(f"| {pair} | " + " | ".join(cells) + f" | {flips}/{len(seeds)} | {secs:.0f} |")
        lines += ["| **mean** | " + " | ".join(f"**{np.mean(v):.1f}**" for v in means.values()) + " | | |", ""]
    if "ablation" in results:
        ab = results["ablation"]
        lines += [
            f"## Ablation (subsample 0, {ab['restarts']} restarts): accuracy %",
            "",
            "| pair | plain entropic GW + restarts + direction check (flipped?) | fused GW, no direction check |",
            "|---|---|---|",
        ]
        for pair, row in ab["pairs"].items():
            lines.append(
                f"| {pair} | {100 * row['gw_restarts_direction_check']:.1f} "
                f"({'yes' if row['gw_restarts_direction_check_flipped'] else 'no'}) "
                f"| {100 * row['fused_no_direction_check']:.1f} |"
            )
        lines.append("")
    if "rrl" in results:
        lines += [
            "## Robust Gaussian reward vs fixed-variance Bradley-Terry reward, trained on the transferred labels",
            "",
            "Pair accuracy (%) of the learned return on the target segments against their true returns, 3 reward "
            "seeds (4000 pairs, 10 epochs).",
            "",
            "| target | transferred labels themselves | Gaussian (PEARL RRL) | fixed variance (plain BT) |",
            "|---|---|---|---|",
        ]
        for target, row in results["rrl"]["pairs"].items():
            g, b = (np.array(row[k]) * 100 for k in ("gaussian", "fixed_variance_bt"))
            lines.append(
                f"| {target} | {100 * row['transferred_labels']:.1f} | {g.mean():.1f} ({g.min():.0f}–{g.max():.0f}) "
                f"| {b.mean():.1f} ({b.min():.0f}–{b.max():.0f}) |"
            )
        lines.append("")
    if "timing" in results:
        tm = results["timing"]
        lines += [f"## Time at {tm['n']} × {tm['n']} segments ({tm['device']})", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in tm["seconds"].items()] + [""]
    if "policy" in results:
        po = results["policy"]
        lines += [
            f"## Target policy: robust Gaussian reward → filtered BC (top {po['top_fraction']:.0%} of the target's "
            f"unlabelled trajectories), success % over {po['episodes']} episodes of 200 steps, mean [per BC seed "
            f"{po.get('bc_seeds', [0])}]; one reward per row",
            "",
            "| target | 0 target labels (transferred) | true target labels | BC on all (no labels) | reward pair acc. "
            "transferred / true | chosen behaviours transferred (e0, e.3, e1, e2, late, early, rand) |",
            "|---|---|---|---|---|---|",
        ]
        for target, row in po["targets"].items():
            tr_, tl = row["transferred"], row["true_labels"]
            per_tr = [round(100 * v) for v in tr_.get("success_per_bc_seed", [tr_["success"]])]
            per_tl = [round(100 * v) for v in tl.get("success_per_bc_seed", [tl["success"]])]
            lines.append(
                f"| {target} | {100 * tr_['success']:.0f} {per_tr} | {100 * tl['success']:.0f} {per_tl} "
                f"| {100 * row['bc_all']['success']:.0f} "
                f"| {100 * tr_['reward_pair_accuracy_on_target_segments']:.0f} / "
                f"{100 * tl['reward_pair_accuracy_on_target_segments']:.0f} | {tr_['chosen_behaviours']} |"
            )
        lines.append("")
    if "policy_scarce" in results:
        lines += scarce_markdown(results["policy_scarce"], results.get("transfer", {}).get("alpha"))
    lines += NOTES
    out.with_suffix(".md").write_text("\n".join(lines))


def scarce_markdown(po: dict[str, Any], alpha: float | None) -> list[str]:
    """Markdown section of the ``policy_scarce`` stage (same layout as the ``policy`` table, plus the baselines)."""

    def cell(entry: dict[str, Any]) -> str:
        return f"{100 * entry['success']:.0f} {[round(100 * v) for v in entry['success_per_bc_seed']]}"

    from mmpref.control.pearl.data import BEHAVIOURS

    some = next(iter(po["targets"].values()))
    thinned = po["thinned"]
    others = [b for b in BEHAVIOURS if b not in thinned]
    lines = [
        f"## Target policy from a scarce pool: filtered BC (top {po['top_fraction']:.0%} of the pool, "
        f"{some['filtered_size']} of {some['pool_size']} trajectories), success % over {po['episodes']} episodes of "
        f"200 steps, mean [per BC seed {po['bc_seeds']}]",
        "",
        f"Pool: the target's odd (unlabelled) trajectories with only {po['keep']} each of {', '.join(thinned)} kept "
        f"(drawn with `numpy.random.default_rng({po['pool_seed']})`) and all of {', '.join(others)}. The rewards are "
        f"the `policy` stage's (fitted on the same {po['n']} labelled target segments, which still come from all "
        "odd trajectories); only the pool that BC selects from is thinned. Every column is cloned "
        "with the same cloning (30 epochs, per BC seed); *random filter* clones a random subset of the filtered "
        f"size (`default_rng(bc_seed)`). Transferred labels: fused GW with α = {alpha}. Run: `{po['command']}`.",
        "",
        "| target | pool (e0, e.3, e1, e2, late, early, rand) | 0 target labels (transferred) | true target labels "
        "| BC on all of the pool | random filter | chosen transferred | chosen true | chosen random (per BC seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, row in po["targets"].items():
        tr_, tl, rf = row["transferred"], row["true_labels"], row["random_filter"]
        lines.append(
            f"| {target} | {row['pool_behaviours']} | {cell(tr_)} | {cell(tl)} | {cell(row['bc_all'])} | {cell(rf)} "
            f"| {tr_['chosen_behaviours']} | {tl['chosen_behaviours']} | "
            + " ".join(str(c) for c in rf["chosen_behaviours_per_bc_seed"])
            + " |"
        )
    return [*lines, ""]


NOTES = [
    "## Notes",
    "",
    "- Target labels are used only to score. α was chosen on the development pairs (tasks disjoint from the "
    "evaluation pairs). Disclosure: one exploratory run on the evaluation pairs (α ∈ {0.1, 0.5, 0.9}, one "
    "subsample, no restarts) was looked at before the development-pair selection was written; the development "
    "pairs chose α = 0.9 on their own. ε = 0.01 and max-normalised z-scored costs come from the earlier measurement "
    "of plain GW on these tasks (pearl-notes); 3 restarts and the direction check were fixed before the runs above.",
    "- The three subsamples draw 480 of ~488 segments per side from the same rollouts, so they are not independent "
    "data (hence the tiny ranges); the `rollout seed 1` table uses freshly generated trajectories "
    "(`--stage transfer --data-seed 1`).",
    "- Accuracy is over all target pairs with |ΔR| > 0.1·std(R); 0.5 counts half. Plain GW reproduces the failure "
    "measured before (drawer-open → drawer-close inverted); the direction check alone repairs it (ablation). On the "
    "evaluation pairs the fused plan never needed the flip: the feature cost already fixes the direction.",
    "- Policy: the target's unlabelled pool (122 trajectories, 7 behaviours) is easy for BC — cloning all of it "
    "already reaches 100 % — so this stage shows that 0-label transfer loses nothing against true labels, not that "
    "labels are needed. The lower true-label cells are BC-seed variance (e.g. 40/95/100 %), not worse rewards.",
    "- Robust reward: on these transferred labels the Gaussian reward (RRL) is within a point of a fixed-variance "
    "Bradley-Terry reward on every target; no robustness gain is measurable here (the transferred labels' errors "
    "are systematic, not the scattered noise a per-pair variance absorbs).",
    "- Timings are wall-clock on 2 shared vCPUs used by other jobs (load average ≈ 4 for the 1000 × 1000 table, "
    "8-17 during the transfer runs, whose 'robust s' column is therefore inflated): upper bounds. "
    "No GPU here: the CUDA path (POT torch backend) is code + a `gpu` test.",
    "",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", nargs="+", default=["dev", "transfer", "ablation", "timing", "policy"])
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--timing-n", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--top-fraction", type=float, default=0.2)
    parser.add_argument("--bc-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seed", type=int, default=0, help="rollout seed of the transfer stage's data")
    parser.add_argument("--scarce-keep", type=int, default=2, help="trajectories kept of each --scarce-thin behaviour")
    parser.add_argument(
        "--scarce-thin", nargs="+", default=["expert0", "expert0.3"], help="behaviours thinned to --scarce-keep"
    )
    parser.add_argument("--scarce-top-fraction", type=float, default=0.05, help="filtered-BC fraction (scarce)")
    parser.add_argument("--out", type=Path, default=OUT, help="results path without suffix (.json and .md)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    json_path = args.out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    results["machine"] = (
        f"2 vCPU AMD EPYC ({platform.platform()}), torch {torch.__version__}, CPU only, shared with other jobs; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; {datetime.now(UTC).isoformat(timespec='seconds')}"
    )
    invoked = "OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python scripts/bench_pearl.py " + shlex.join(sys.argv[1:])
    if args.out == OUT:
        results["command"] = (
            "OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python scripts/bench_pearl.py "
            "--stage dev transfer ablation timing policy"
        )
    else:  # a side run: the reproduce line lists every invocation that wrote into it, in order
        earlier = [c for c in results.get("command", "").split("; ") if c]
        results["command"] = "; ".join(dict.fromkeys([*earlier, invoked]))
    DATA_SEED[0] = args.data_seed
    stages = {
        "dev": lambda: stage_dev(results, args.n),
        "transfer": lambda: stage_transfer(results, args.n, args.seeds, args.restarts),
        "ablation": lambda: stage_ablation(results, args.n, args.restarts),
        "timing": lambda: stage_timing(results, args.timing_n),
        "rrl": lambda: stage_rrl(results, args.n),
        "report": lambda: None,  # only rewrites the markdown from the JSON
        "policy": lambda: stage_policy(results, args.n, args.episodes, args.top_fraction, args.bc_seeds),
        "policy_scarce": lambda: stage_policy_scarce(
            results,
            args.n,
            args.episodes,
            args.scarce_top_fraction,
            args.bc_seeds,
            args.scarce_keep,
            args.scarce_thin,
            invoked,
        ),
    }
    for stage in args.stage:
        before = set(results)
        stages[stage]()
        produced = {k: results[k] for k in set(results) - before | {"machine", "command"}}
        # A stage owns the keys that start with its name (transfer → transfer_data_seed1), except other stages'
        # own keys (policy must not re-emit a stale policy_scarce).
        produced |= {k: results[k] for k in results if k.startswith(stage) and (k == stage or k not in stages)}
        # Merge into what is on disk now: another stage may have finished meanwhile in a second process.
        on_disk = json.loads(json_path.read_text()) if json_path.exists() else {}
        results = on_disk | produced
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1, default=float))
        write_markdown(results, args.out)


if __name__ == "__main__":
    main()
