"""The two sides of a PEARL transfer: segments of generated rollouts or of a robomimic file, with their labels.

A source needs preference labels (complete ones from generated returns, or a file's labelled pairs); a target needs
only segments (its returns, when known, score the transfer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmpref.control.pearl.config import PearlConfig
from mmpref.control.segments import Episode
from mmpref.recipe import RecipeError, blame


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


def subsample(side: Side, n: int, rng: np.random.Generator) -> Side:
    """At most ``n`` segments of ``side``, drawn without replacement (all of them, in order, when there are fewer)."""
    if len(side) <= n:
        return side
    return side.subset(rng.choice(len(side), n, replace=False))


def generated_side(config: PearlConfig, task: str, parity: int) -> Side:
    """Segments of the generated rollouts' even (``parity`` 0, source) or odd (1, target) trajectories."""
    from mmpref.control.pearl.data import load_or_generate, segment_arrays
    from mmpref.control.pearl.transfer import label_matrix

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
