"""``mmpref pearl``: transfer preference labels from a labelled source task to an unlabelled target task (PEARL).

Each side is either generated or read from a robomimic HDF5 file:

* generated (``source`` / ``target`` = a Meta-World task): the mixed-behaviour rollouts of
  :mod:`mmpref.control.pearl.data` (cached in ``cache``), as in ``scripts/bench_pearl.py``: the source side takes
  the even trajectories and is labelled by true return (a simulated labeller), the target side takes the odd ones;
* from a file (``source_data`` / ``target_data``): the source's segments are those of its stored preference pairs
  (only those pairs are labelled: a mask), the target's are its episodes cut into ``length``-step segments.

At most ``segments`` segments per side are kept (a random subset, seeded by ``seed``;
:mod:`mmpref.control.pearl.sides`). The coupling is :func:`mmpref.control.pearl.transfer.robust_coupling` (fused
Gromov-Wasserstein over a cross-task cost on shared features, restarts, a direction check against a shared-feature
reward fitted on the source labels); labels move along it by :func:`~mmpref.control.pearl.transfer.transfer_labels`.
When the target's true returns vary, the transferred labels are scored against them
(:func:`~mmpref.control.pearl.transfer.transfer_accuracy`; they are used for nothing else).

Writes ``labels.npz`` (every transferred label ŷ ``[n, n]`` and which segment each row is), ``target.hdf5`` (the
target's episodes with ``write_pairs`` random segment pairs labelled ŷ: ``mmpref cpl --dataset ...`` trains on
it) and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mmpref.control.pearl.config import PearlConfig
from mmpref.control.pearl.sides import Side, load_sides
from mmpref.control.segments import episode_segment
from mmpref.data import Segment, SegmentPair, atomic_write
from mmpref.recipe import out_option, run_job

# --- the two sides -----------------------------------------------------------------------------------------------


# --- the transfer ------------------------------------------------------------------------------------------------


def transfer(config: PearlConfig, source: Side, target: Side) -> dict[str, Any]:
    """Robust coupling, transferred labels, and (with target returns) their accuracy and the baseline's."""
    from mmpref.control.pearl import transfer as pearl

    f_s = pearl.zscore(pearl.summary_features(source.obs, source.act))
    f_t = pearl.zscore(pearl.summary_features(target.obs, target.act))
    anchor_model = pearl.FeatureBradleyTerry().fit(f_s, source.labels)
    start = time.perf_counter()
    result = pearl.robust_coupling(
        pearl.distance_matrix(f_s, f_t),
        pearl.distance_matrix(pearl.flat_features(source.obs, source.act)),
        pearl.distance_matrix(pearl.flat_features(target.obs, target.act)),
        source.labels,
        anchor_model.score(f_t) if config.direction_check else None,
        mask=source.mask,
        alpha=config.alpha,
        epsilon=config.epsilon,
        restarts=config.restarts,
        seed=config.seed,
        device=config.device,
    )
    out: dict[str, Any] = {
        "labels": np.clip(result.labels, 0.0, 1.0),
        "objective": _finite_or_none(result.objective),
        "objectives": [_finite_or_none(v) for v in result.objectives],
        "flipped": result.flipped,
        "anchor_spearman": _finite_or_none(result.agreement),
        "seconds": time.perf_counter() - start,
        "accuracy": None,
        "shared_feature_baseline_accuracy": None,
    }
    if target.returns is not None:
        try:
            out["accuracy"] = pearl.transfer_accuracy(out["labels"], target.returns)
            out["shared_feature_baseline_accuracy"] = pearl.transfer_accuracy(
                anchor_model.pair_labels(f_t), target.returns
            )
        except ValueError:  # no target pair differs enough in return to be scored
            pass
    return out


def _finite_or_none(value: float) -> float | None:
    """``value`` as a float, or ``None`` for NaN/inf (so that summary.json stays strict JSON)."""
    return float(value) if np.isfinite(value) else None


# --- outputs -----------------------------------------------------------------------------------------------------


def _segment(target: Side, j: int) -> Segment:
    e, s = int(target.episode[j]), int(target.start[j])
    episode = target.episodes[e]
    return episode_segment(episode, s, target.obs.shape[1], f"{episode.source or 'ep'}{e}:{s}")


def labelled_pairs(target: Side, labels: np.ndarray, n: int, seed: int) -> list[SegmentPair]:
    """``n`` random distinct target pairs (all when fewer) labelled with their transferred P(a ≻ b)."""
    i, k = np.triu_indices(len(target), 1)
    chosen = np.random.default_rng(seed).permutation(len(i))[:n]
    return [
        SegmentPair(
            id=f"pair{m}",
            a=_segment(target, int(i[c])),
            b=_segment(target, int(k[c])),
            label=float(labels[i[c], k[c]]),
            teacher="pearl-transfer",
        )
        for m, c in enumerate(chosen)
    ]


def write_outputs(
    config: PearlConfig, source: Side, target: Side, result: dict[str, Any], out: Path
) -> dict[str, Any]:
    """``labels.npz``, ``target.hdf5`` (episodes + transferred pairs) and ``summary.json``; returns the summary."""
    from mmpref.control.robomimic_io import write_robomimic

    with atomic_write(out / "labels.npz", "wb") as handle:
        np.savez_compressed(
            handle,
            labels=result["labels"],
            episode=target.episode,
            start=target.start,
            length=np.array(target.obs.shape[1]),
            returns=target.returns if target.returns is not None else np.zeros(0),
        )
    pairs = labelled_pairs(target, result["labels"], config.write_pairs, config.seed)
    write_robomimic(out / "target.hdf5", target.episodes, target.task, pairs=pairs)
    summary = {
        "config": asdict(config),
        "source": {"task": source.task, "segments": len(source), "labelled_pairs": _labelled(source)},
        "target": {"task": target.task, "segments": len(target), "episodes": len(target.episodes)},
        "transfer": {k: v for k, v in result.items() if k != "labels"},
        "written_pairs": len(pairs),
    }
    with atomic_write(out / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    return summary


def _labelled(side: Side) -> int:
    n = len(side)
    return int(np.triu(side.mask, 1).sum()) if side.mask is not None else n * (n - 1) // 2


def report(summary: dict[str, Any], out: Path) -> str:
    """The transfer in a few lines: sizes, accuracy (when scored), the direction check, the files written."""
    s, t, tr = summary["source"], summary["target"], summary["transfer"]
    lines = [
        f"transferred labels from {s['segments']} {s['task']} segments ({s['labelled_pairs']} labelled pairs) to "
        f"{t['segments']} {t['task']} segments"
    ]
    if tr["accuracy"] is not None:
        lines.append(
            f"accuracy against the target's true returns: {100 * tr['accuracy']:.1f} % "
            f"(shared-feature baseline {100 * tr['shared_feature_baseline_accuracy']:.1f} %, chance 50 %)"
        )
    else:
        lines.append("the target has no varying returns: accuracy not scored")
    if tr["anchor_spearman"] is not None:
        verdict = "flipped" if tr["flipped"] else "kept"
        lines.append(
            f"direction check: {verdict} (Spearman {tr['anchor_spearman']:+.2f} with the shared-feature reward)"
        )
    lines.append(
        f"written: {out}/labels.npz, {out}/target.hdf5 ({summary['written_pairs']} pairs), {out}/summary.json"
    )
    return "\n".join(lines)


def run_pearl(argv: Sequence[str]) -> int:
    """``mmpref pearl``: transfer preference labels from a labelled source task to an unlabelled target task.

    Writes ``<out>/labels.npz``, ``target.hdf5`` (train on it with ``mmpref cpl``) and ``summary.json``.
    """
    options = out_option("runs/pearl/<source>-to-<target>-seed<seed>")
    return run_job("mmpref pearl", PearlConfig, argv, _run, options, run_pearl.__doc__)


def _run(config: PearlConfig, args: Any) -> int:
    source, target = load_sides(config)
    out = Path(args.out or f"runs/pearl/{source.task}-to-{target.task}-seed{config.seed}")
    summary = write_outputs(config, source, target, transfer(config, source, target), out)
    print(report(summary, out))
    return 0
