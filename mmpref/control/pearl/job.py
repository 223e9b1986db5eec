"""``mmpref pearl``: transfer preference labels from a labelled source task to an unlabelled target task (PEARL).

Each side is either generated or read from a robomimic HDF5 file:

* generated (``source`` / ``target`` = a Meta-World task): the mixed-behaviour rollouts of
  :mod:`mmpref.control.pearl.data` (cached in ``cache``), as in ``scripts/bench_pearl.py``: the source side takes
  the even trajectories and is labelled by true return (a simulated labeller), the target side takes the odd ones;
* from a file (``source_data`` / ``target_data``): the source's segments are those of its stored preference pairs
  (only those pairs are labelled: a mask), the target's are its episodes cut into ``length``-step segments.

At most ``segments`` segments per side are kept (a random subset, seeded by ``seed``). The coupling is
:func:`mmpref.control.pearl.transfer.robust_coupling` (fused Gromov-Wasserstein over a cross-task cost on shared features,
restarts, a direction check against a shared-feature reward fitted on the source labels); labels move along it by
:func:`~mmpref.control.pearl.transfer.transfer_labels`. When the target's true returns vary, the transferred labels are scored
against them (:func:`~mmpref.control.pearl.transfer.transfer_accuracy`; they are used for nothing else).

Writes ``labels.npz`` (every transferred label ŷ ``[n, n]`` and which segment each row is), ``target.hdf5`` (the
target's episodes with ``write_pairs`` random segment pairs labelled ŷ: ``mmpref cpl --set dataset=...`` trains on
it) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmpref.control.segments import Episode, episode_segment
from mmpref.data import Segment, SegmentPair, atomic_write
from mmpref.recipe import RecipeError, add_recipe_arguments, blame, load_recipe, require_at_least


@dataclass
class PearlConfig:
    """One label transfer (a recipe's fields).

    Args:
        source: labelled source task (generated data), or the task recorded in ``source_data``.
        target: unlabelled target task (generated data), or the task recorded in ``target_data``.
        source_data: robomimic HDF5 file with preference pairs to transfer from, instead of generated data.
        target_data: robomimic HDF5 file of target episodes, instead of generated data.
        segments: at most this many segments per side (a random subset when there are more).
        length: steps per segment (generated data, and the target file's segments).
        per_behaviour: generated trajectories per behaviour (7 behaviours) and task.
        steps: steps per generated trajectory.
        data_seed: seed of the generated rollouts.
        cache: folder caching the generated rollouts (``.npz``, shared with ``scripts/bench_pearl.py``).
        alpha: weight of the Gromov-Wasserstein term in the fused objective.
        epsilon: entropic regularisation ε (``null``: the exact solver).
        restarts: solver runs (the product start, then random plans), keeping the lowest objective.
        direction_check: flip the labels when their ranking disagrees with the shared-feature reward.
        seed: seeds the segment subsets, the random starts and the written pairs.
        device: ``"cpu"`` (numpy), ``"cuda"`` (POT's torch backend) or ``"auto"``.
        write_pairs: random target pairs written with their transferred labels to ``target.hdf5``.
    """

    source: str | None = None
    target: str | None = None
    source_data: str | None = None
    target_data: str | None = None
    segments: int = 480
    length: int = 50
    per_behaviour: int = 35
    steps: int = 200
    data_seed: int = 0
    cache: str = "runs/pearl"
    alpha: float = 0.9
    epsilon: float | None = 0.01
    restarts: int = 3
    direction_check: bool = True
    seed: int = 0
    device: str = "cpu"
    write_pairs: int = 1000

    def __post_init__(self) -> None:
        for side in ("source", "target"):
            if getattr(self, side) is None and getattr(self, f"{side}_data") is None:
                raise ValueError(
                    f"set {side}=<Meta-World task> (generated rollouts) or {side}_data=<file.hdf5> (a robomimic file)"
                )
        require_at_least(self, ("length", "per_behaviour", "steps", "restarts", "write_pairs"))
        if self.segments < 3:
            raise ValueError(f"segments must be >= 3 to form comparable pairs, got {self.segments}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha weights the GW term and must lie in [0, 1], got {self.alpha}")
        if self.epsilon is not None and self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0 (or null for the exact solver), got {self.epsilon}")


@dataclass(frozen=True)
class Side:
    """The segments of one task.

    Attributes:
        task: task name.
        obs: ``[S, H, o]`` observations.
        act: ``[S, H, a]`` actions.
        returns: ``[S]`` true returns, or ``None`` when unknown (no reward signal).
        episode: ``[S]`` index into ``episodes`` of each segment.
        start: ``[S]`` first step of each segment in its episode.
        episodes: the episodes the segments come from.
        labels: ``[S, S]`` P(i ≻ k) (source side only).
        mask: ``[S, S]`` 1 where a source pair is labelled, or ``None`` when all are.
    """

    task: str
    obs: np.ndarray
    act: np.ndarray
    returns: np.ndarray | None
    episode: np.ndarray
    start: np.ndarray
    episodes: list[Episode]
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.obs)

    def subset(self, keep: np.ndarray) -> Side:
        """The segments ``keep`` (labels and mask restricted to them)."""

        def square(matrix: np.ndarray | None) -> np.ndarray | None:
            return None if matrix is None else matrix[np.ix_(keep, keep)]

        returns = None if self.returns is None else self.returns[keep]
        return replace(
            self,
            obs=self.obs[keep],
            act=self.act[keep],
            returns=returns,
            episode=self.episode[keep],
            start=self.start[keep],
            labels=square(self.labels),
            mask=square(self.mask),
        )


# --- the two sides -----------------------------------------------------------------------------------------------


def subsample(side: Side, n: int, rng: np.random.Generator) -> Side:
    """At most ``n`` segments of ``side``, drawn without replacement (all of them, in order, when there are fewer)."""
    if len(side) <= n:
        return side
    return side.subset(rng.choice(len(side), n, replace=False))


def generated_side(config: PearlConfig, task: str, parity: int) -> Side:
    """Segments of the generated rollouts' even (``parity`` 0, source) or odd (1, target) trajectories."""
    from mmpref.control.pearl.transfer import label_matrix
    from mmpref.control.pearl.data import load_or_generate, segment_arrays

    data = load_or_generate(task, config.cache, config.per_behaviour, config.steps, config.data_seed)
    rows = np.arange(parity, len(data.observations), 2)
    if len(rows) == 0:
        raise ValueError(f"{task}: no trajectory on this side; raise per_behaviour")
    cut = segment_arrays(data, config.length, config.length, trajectories=rows)
    if len(cut["ret"]) < 3:
        raise ValueError(f"{task}: {len(cut['ret'])} segments of {config.length} steps; lower length or raise steps")
    position = {int(t): k for k, t in enumerate(rows)}
    everything = data.episodes()
    side = Side(
        task=task,
        obs=cut["obs"],
        act=cut["act"],
        returns=cut["ret"],
        episode=np.array([position[int(t)] for t in cut["traj"]]),
        start=cut["start"],
        episodes=[everything[int(t)] for t in rows],
    )
    side = subsample(side, config.segments, np.random.default_rng(1000 * config.seed + parity))
    return replace(side, labels=label_matrix(side.returns)) if parity == 0 else side


def _returns_or_none(returns: np.ndarray) -> np.ndarray | None:
    return returns if len(returns) and np.ptp(returns) > 0 else None


def file_target(config: PearlConfig, path: Path) -> Side:
    """The target side from a robomimic file: every episode cut into ``length``-step segments, then subsampled."""
    from mmpref.control.robomimic_io import read_robomimic, resolve_env_name

    task = resolve_env_name(path, config.target) or path.stem
    episodes = read_robomimic(path)
    index = [(e, s) for e, ep in enumerate(episodes) for s in range(0, len(ep) - config.length + 1, config.length)]
    if len(index) < 3:
        raise ValueError(f"{path}: only {len(index)} segments of {config.length} steps; lower length")

    def stack(field: str) -> np.ndarray:
        return np.stack([getattr(episodes[e], field)[s : s + config.length] for e, s in index])

    side = Side(
        task=task,
        obs=stack("observations"),
        act=stack("actions"),
        returns=_returns_or_none(stack("rewards").sum(1).astype(np.float64)),
        episode=np.array([e for e, _ in index]),
        start=np.array([s for _, s in index]),
        episodes=episodes,
    )
    return subsample(side, config.segments, np.random.default_rng(1000 * config.seed + 1))


def file_source(config: PearlConfig, path: Path) -> Side:
    """The source side from a robomimic file's preference pairs: their segments, labelled only where paired."""
    from mmpref.control.robomimic_io import read_preference_pairs, read_robomimic, resolve_env_name

    task = resolve_env_name(path, config.source) or path.stem
    episodes = read_robomimic(path)
    pairs = read_preference_pairs(path)
    ids = list(dict.fromkeys(s.id for p in pairs for s in (p.a, p.b)))
    segments = {s.id: s for p in pairs for s in (p.a, p.b)}
    if len({len(s) for s in segments.values()}) != 1:
        raise ValueError(f"{path}: the preference pairs mix segment lengths; PEARL compares equal-length segments")
    keep = ids
    if len(ids) > config.segments:
        chosen = np.sort(np.random.default_rng(1000 * config.seed).choice(len(ids), config.segments, replace=False))
        keep = [ids[i] for i in chosen]
    position = {sid: k for k, sid in enumerate(keep)}
    labels, mask = np.full((len(keep), len(keep)), 0.5), np.zeros((len(keep), len(keep)))
    for p in pairs:
        i, k = position.get(p.a.id), position.get(p.b.id)
        if i is not None and k is not None and i != k:
            labels[i, k], labels[k, i] = p.label, 1.0 - p.label
            mask[i, k] = mask[k, i] = 1.0
    if not (labels[mask > 0] != 0.5).any():
        raise ValueError(f"{path}: no strictly preferred pair among the kept segments; raise segments or add labels")
    chosen_segments = [segments[sid] for sid in keep]
    return Side(
        task=task,
        obs=np.stack([s.observations for s in chosen_segments]),
        act=np.stack([s.actions for s in chosen_segments]),
        returns=None,
        episode=np.array([int(s.id.split(":")[0].removeprefix("demo_")) for s in chosen_segments]),
        start=np.array([s.start for s in chosen_segments]),
        episodes=episodes,
        labels=labels,
        mask=mask,
    )


def load_sides(config: PearlConfig) -> tuple[Side, Side]:
    """Source and target sides; bad input (unknown task, missing file, no labels) raises ``RecipeError``."""
    from mmpref.control.envs import check_task

    for name in ("source", "target"):
        if getattr(config, f"{name}_data") is None:
            with blame(name):
                check_task(getattr(config, name))
    sides = []  # source (even generated trajectories, parity 0), then target (odd, 1)
    for parity, (name, read_file) in enumerate((("source", file_source), ("target", file_target))):
        path = getattr(config, f"{name}_data")
        if path is not None:
            with blame(f"{name}_data"):
                sides.append(read_file(config, Path(path)))
        else:
            with blame(name):
                sides.append(generated_side(config, getattr(config, name), parity))
    source, target = sides
    if source.obs.shape[-1] != target.obs.shape[-1] or source.obs.shape[-1] < 7:
        raise RecipeError(
            f"source observations have {source.obs.shape[-1]} dims and target {target.obs.shape[-1]}: the shared "
            "features need Meta-World's layout (hand 0:3, gripper 3, object 4:7) on both sides"
        )
    return source, target


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
    parser = argparse.ArgumentParser(prog="mmpref pearl", description=run_pearl.__doc__)
    add_recipe_arguments(parser, PearlConfig)
    parser.add_argument(
        "--out", default=None, help="output folder (default runs/pearl/<source>-to-<target>-seed<seed>)"
    )
    args = parser.parse_args(argv)
    try:
        config = load_recipe(PearlConfig, args.config, args.set)
        source, target = load_sides(config)
    except RecipeError as err:
        print(f"mmpref pearl: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/pearl/{source.task}-to-{target.task}-seed{config.seed}")
    summary = write_outputs(config, source, target, transfer(config, source, target), out)
    print(report(summary, out))
    return 0
