"""robomimic-format HDF5 datasets: rollouts written in robomimic's layout, preference labels and ratings beside them.

Layout (robomimic's, so its ``SequenceDataset`` loads the file)::

    data/                      attrs: total, env_args (JSON)
      demo_<i>/                attrs: num_samples, quality (e.g. the expert's action noise), success
        obs/<obs_key>          [T, o] float32 (low-dim)
        next_obs/<obs_key>     [T, o]
        actions                [T, a]
        rewards                [T]
        dones                  [T] (1 at the last step)
    mask/<filter>              demo names (bytes), e.g. "train", "valid", or quality groups
    preferences/               mmpref's segment-pair labels: demo_a, start_a, demo_b, start_b (int), length,
                               label (P(a ≻ b)), teacher (attr)
    ratings/                   demo (int), start, length, rating

Files are written to a temporary path beside the target and moved over it only when complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmpref.control.segments import Episode, episode_segment
from mmpref.data import DataError, Segment, SegmentPair


def _demo_index(segment: Segment, names: dict[str, int]) -> int:
    key = segment.id.rsplit(":", 1)[0]
    if key not in names:
        raise ValueError(f"segment {segment.id!r} does not come from an episode being written")
    return names[key]


def write_robomimic(
    path: str | Path,
    episodes: Sequence[Episode],
    env_name: str,
    obs_key: str = "state",
    masks: dict[str, Sequence[int]] | None = None,
    pairs: Sequence[SegmentPair] = (),
    ratings: Sequence[tuple[Segment, int]] = (),
    qualities: Sequence[float] | None = None,
) -> Path:
    """Write episodes (and labels about their segments) as one robomimic HDF5 file, atomically.

    Segments must come from :func:`mmpref.control.segments.cut_segments` over these same episodes, in order (their
    ids name the episode: ``<source><index>:<start>``).
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {f"{ep.source or 'ep'}{i}": i for i, ep in enumerate(episodes)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            total = 0
            for i, ep in enumerate(episodes):
                demo = data.create_group(f"demo_{i}")
                demo.create_group("obs").create_dataset(obs_key, data=ep.observations.astype(np.float32))
                demo.create_group("next_obs").create_dataset(obs_key, data=ep.next_observations.astype(np.float32))
                demo.create_dataset("actions", data=ep.actions.astype(np.float32))
                demo.create_dataset("rewards", data=ep.rewards.astype(np.float32))
                dones = np.zeros(len(ep), np.int64)
                dones[-1] = 1
                demo.create_dataset("dones", data=dones)
                demo.attrs["num_samples"] = len(ep)
                demo.attrs["success"] = bool(ep.succeeded)
                demo.attrs["quality"] = float(qualities[i]) if qualities is not None else float("nan")
                total += len(ep)
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(
                {"env_name": env_name, "type": 4, "env_kwargs": {}, "source": "mmpref metaworld"}
            )
            mask = f.create_group("mask")
            for name, indices in (masks or {"train": list(range(len(episodes)))}).items():
                mask.create_dataset(name, data=np.array([f"demo_{i}".encode() for i in indices]))
            if pairs:
                group = f.create_group("preferences")
                group.create_dataset("demo_a", data=[_demo_index(p.a, names) for p in pairs])
                group.create_dataset("start_a", data=[p.a.start for p in pairs])
                group.create_dataset("demo_b", data=[_demo_index(p.b, names) for p in pairs])
                group.create_dataset("start_b", data=[p.b.start for p in pairs])
                group.create_dataset("length", data=[len(p.a) for p in pairs])
                group.create_dataset("label", data=np.array([p.label for p in pairs], np.float32))
                group.attrs["teacher"] = pairs[0].teacher
            if ratings:
                group = f.create_group("ratings")
                group.create_dataset("demo", data=[_demo_index(s, names) for s, _ in ratings])
                group.create_dataset("start", data=[s.start for s, _ in ratings])
                group.create_dataset("length", data=[len(s) for s, _ in ratings])
                group.create_dataset("rating", data=[int(r) for _, r in ratings])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _open(path: Path):  # noqa: ANN202
    import h5py

    if not path.is_file():
        raise DataError(path, ["file not found; check the path"])
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DataError(path, [f"not a readable HDF5 file ({err}); re-write it with write_robomimic"]) from None
    if "data" not in handle:
        handle.close()
        raise DataError(path, ["no 'data' group: not a robomimic dataset"])
    return handle


def read_robomimic(path: str | Path, obs_key: str | None = None, filter_key: str | None = None) -> list[Episode]:
    """Read the episodes of a robomimic file (any writer), in demo-number order.

    Args:
        path: the HDF5 file.
        obs_key: the low-dim observation to read (default: the only one, else an error listing them).
        filter_key: read only the demos listed in ``mask/<filter_key>``.
    """
    path = Path(path)
    with _open(path) as f:
        demos = sorted(f["data"].keys(), key=lambda name: int(name.split("_")[-1]))
        if filter_key is not None:
            if f"mask/{filter_key}" not in f:
                raise DataError(path, [f"no filter 'mask/{filter_key}'; available: {list(f.get('mask', {}))}"])
            wanted = {n.decode() if isinstance(n, bytes) else n for n in f[f"mask/{filter_key}"][()]}
            demos = [d for d in demos if d in wanted]
        episodes = []
        for name in demos:
            demo = f["data"][name]
            keys = list(demo["obs"].keys())
            key = obs_key or (keys[0] if len(keys) == 1 else None)
            if key is None or key not in demo["obs"]:
                raise DataError(path, [f"{name}: choose obs_key among {keys}"])
            try:
                obs = demo["obs"][key][()]
                next_obs = demo["next_obs"][key][()] if "next_obs" in demo else np.concatenate([obs[1:], obs[-1:]])
                episodes.append(
                    Episode(
                        obs.astype(np.float32),
                        demo["actions"][()].astype(np.float32),
                        demo["rewards"][()].astype(np.float32),
                        next_obs.astype(np.float32),
                        np.full(len(obs), float(demo.attrs.get("success", 0.0)), np.float32),
                        source=name,
                    )
                )
            except (KeyError, OSError) as err:
                raise DataError(path, [f"{name}: damaged or incomplete ({err})"]) from None
    return episodes


def read_env_name(path: str | Path) -> str | None:
    """The ``env_name`` recorded in ``data.attrs["env_args"]`` (robomimic's field), or ``None`` when absent."""
    path = Path(path)
    with _open(path) as f:
        raw = f["data"].attrs.get("env_args")
    if raw is None:
        return None
    try:
        name = json.loads(raw).get("env_name")
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise DataError(
            path, ["data.attrs['env_args'] is not a JSON object; re-write it with write_robomimic"]
        ) from None
    return str(name) if name else None


def resolve_env_name(path: str | Path, expected: str | None) -> str | None:
    """``expected`` if given, else the file's recorded ``env_name``; a ``DataError`` when both are set and differ."""
    recorded = read_env_name(path)
    if expected is not None and recorded is not None and expected != recorded:
        raise DataError(path, [f"recorded on {recorded!r}, not {expected!r}: leave the task unset to use the file's"])
    return expected or recorded


def read_preference_pairs(path: str | Path, obs_key: str | None = None) -> list[SegmentPair]:
    """The segment pairs stored in ``preferences/``, rebuilt from the episodes they index."""
    path = Path(path)
    episodes = read_robomimic(path, obs_key)
    with _open(path) as f:
        if "preferences" not in f:
            raise DataError(path, ["no 'preferences' group: this file holds no segment-pair labels"])
        group = f["preferences"]
        fields = {k: group[k][()] for k in ("demo_a", "start_a", "demo_b", "start_b", "length", "label")}
        teacher = str(group.attrs.get("teacher", ""))

    def segment(demo: int, start: int, length: int) -> Segment:
        ep = episodes[demo]
        end = start + length
        if end > len(ep):
            raise DataError(path, [f"preferences index demo_{demo}[{start}:{end}] beyond its {len(ep)} steps"])
        return episode_segment(ep, start, length, f"demo_{demo}:{start}")

    return [
        SegmentPair(
            id=f"pair{k}",
            a=segment(int(fields["demo_a"][k]), int(fields["start_a"][k]), int(fields["length"][k])),
            b=segment(int(fields["demo_b"][k]), int(fields["start_b"][k]), int(fields["length"][k])),
            label=float(fields["label"][k]),
            teacher=teacher,
        )
        for k in range(len(fields["label"]))
    ]
