"""The settings of one PEARL transfer, :class:`PearlConfig` (the fields of a ``mmpref pearl`` recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from mmpref.recipe import require_at_least


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
        device: where the transport runs: ``"auto"`` (CUDA through POT's torch backend when there is a GPU, else
            numpy on the CPU), ``"cpu"`` or ``"cuda"``.
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
    device: str = "auto"
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
