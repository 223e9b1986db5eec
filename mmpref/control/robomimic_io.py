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
import re
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


_DEMO_NAME = re.compile(r"demo_(\d+)")
_FIX = "re-write the file with mmpref.control.robomimic_io.write_robomimic (or fix it with h5py)"
_DAMAGED = (OSError, KeyError, RuntimeError, TypeError, ValueError)  # what h5py raises for broken objects/links


def _open(path: Path):  # noqa: ANN202
    import h5py

    if path.is_dir():
        raise DataError(path, ["is a folder, not an HDF5 file; pass the robomimic .hdf5 file itself"])
    if not path.is_file():
        raise DataError(path, ["file not found; check the path"])
    try:
        handle = h5py.File(path, "r")
    except _DAMAGED as err:
        raise DataError(path, [f"not a readable HDF5 file ({err}); {_FIX}"]) from None
    if not isinstance(handle.get("data"), h5py.Group):
        handle.close()
        raise DataError(path, ["no 'data' group: not a robomimic dataset (data/demo_<i>/obs, actions, rewards)"])
    return handle


def _demo_names(path: Path, data) -> list[tuple[int, str]]:  # noqa: ANN001
    """``(number, name)`` of every ``data/demo_<int>`` group in number order; anything else is a ``DataError``."""
    import h5py

    numbered, problems = {}, []
    for name in data.keys():
        match = _DEMO_NAME.fullmatch(name)
        if match is None:
            problems.append(f"data/{name}: not named demo_<int>; rename it (robomimic's layout) or remove it")
        elif not isinstance(data.get(name), h5py.Group):
            problems.append(f"data/{name}: not a group (need data/{name}/obs, actions, rewards); {_FIX}")
        elif int(match.group(1)) in numbered:
            problems.append(f"data/{name}: same number as data/{numbered[int(match.group(1))]}; rename one of them")
        else:
            numbered[int(match.group(1))] = name
    if not numbered and not problems:
        problems.append("the 'data' group holds no demos; write at least one data/demo_<i>")
    if problems:
        raise DataError(path, problems)
    return sorted(numbered.items())


def _array(group, field: str, where: str, ndim: tuple[int, ...], problems: list[str]) -> np.ndarray | None:  # noqa: ANN001
    """``group[field]`` as float32 after checking it is a numeric dataset of ``ndim`` dims with finite values."""
    import h5py

    item = group.get(field)
    if not isinstance(item, h5py.Dataset):
        what = "missing" if item is None else "a group, not a dataset"
        problems.append(f"{where}/{field}: {what}; {_FIX}")
        return None
    if item.dtype.kind not in "biuf":
        problems.append(f"{where}/{field}: dtype {item.dtype} is not numeric; store numbers (float32)")
        return None
    if item.ndim not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        problems.append(f"{where}/{field}: shape {item.shape} is {item.ndim}-D, expected {want} ([T] steps first)")
        return None
    value = item[()].astype(np.float32)
    if value.ndim == 2 and ndim == (1, 2):  # rewards stored as [T, 1]
        if value.shape[1] != 1:
            problems.append(f"{where}/{field}: shape {value.shape}; expected [T] or [T, 1]")
            return None
        value = value[:, 0]
    bad = ~np.isfinite(value)
    if bad.any():
        step = int(np.argwhere(bad)[0][0])
        problems.append(
            f"{where}/{field}: {int(bad.sum())} NaN/inf value(s) (first at step {step}, or beyond float32's range); "
            "clean or drop this demo"
        )
        return None
    return value


def _read_demo(demo, name: str, obs_key: str | None, problems: list[str]) -> Episode | None:  # noqa: ANN001
    """One demo as an :class:`Episode`, or ``None`` with its problems (field and fix) appended."""
    import h5py

    where = f"data/{name}"
    obs_group = demo.get("obs")
    if not isinstance(obs_group, h5py.Group):
        problems.append(f"{where}/obs: {'missing' if obs_group is None else 'not a group'}; {_FIX}")
        return None
    keys = list(obs_group.keys())
    key = obs_key or (keys[0] if len(keys) == 1 else None)
    if key is None or key not in obs_group:
        problems.append(f"{where}/obs: choose obs_key among {keys}" if keys else f"{where}/obs: holds no observation")
        return None
    obs = _array(obs_group, key, f"{where}/obs", (2,), problems)
    actions = _array(demo, "actions", where, (2,), problems)
    rewards = _array(demo, "rewards", where, (1, 2), problems)
    next_obs = None
    if "next_obs" in demo:
        next_group = demo.get("next_obs")
        if isinstance(next_group, h5py.Group):
            next_obs = _array(next_group, key, f"{where}/next_obs", (2,), problems)
        else:
            problems.append(f"{where}/next_obs: not a group; {_FIX}")
            return None
    if obs is None or actions is None or rewards is None or ("next_obs" in demo and next_obs is None):
        return None
    steps = len(actions)
    if steps == 0:
        problems.append(f"{where}/actions: the demo has 0 steps; drop it")
        return None
    lengths = {f"obs/{key}": len(obs), "rewards": len(rewards)}
    if next_obs is not None:
        lengths[f"next_obs/{key}"] = len(next_obs)
        if next_obs.shape[1:] != obs.shape[1:]:
            problems.append(f"{where}/next_obs/{key}: shape {next_obs.shape} does not match obs/{key} {obs.shape}")
            return None
    wrong = {field: n for field, n in lengths.items() if n != steps}
    if wrong:
        problems.append(
            f"{where}: {steps} actions but "
            + ", ".join(f"{n} {field}" for field, n in wrong.items())
            + "; every per-step field needs one row per action (T)"
        )
        return None
    try:
        success = float(np.asarray(demo.attrs.get("success", 0.0)).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        problems.append(f"{where}: attribute 'success' = {demo.attrs.get('success')!r} is not a number or bool")
        return None
    if next_obs is None:
        next_obs = np.concatenate([obs[1:], obs[-1:]])
    return Episode(obs, actions, rewards, next_obs, np.full(steps, success, np.float32), source=name)


def read_robomimic(path: str | Path, obs_key: str | None = None, filter_key: str | None = None) -> list[Episode]:
    """Read the episodes of a robomimic file (any writer), in demo-number order, checking everything first.

    Every demo must be a group named ``demo_<int>`` with numeric ``obs/<obs_key>`` ``[T, o]``, ``actions``
    ``[T, a]`` and ``rewards`` ``[T]`` (and ``next_obs/<obs_key>`` ``[T, o]`` if present), all finite and of one
    length ``T >= 1``.

    Args:
        path: the HDF5 file.
        obs_key: the low-dim observation to read (default: the only one, else an error listing them).
        filter_key: read only the demos listed in ``mask/<filter_key>``.

    Raises:
        DataError: naming the file and, for each bad demo (up to 20 listed), the field and the fix.
    """
    path = Path(path)
    with _open(path) as f:
        demos = _demo_names(path, f["data"])
        if filter_key is not None:
            demos = _filtered(path, f, filter_key, demos)
        episodes, problems = [], []
        for _, name in demos:
            try:
                episode = _read_demo(f["data"][name], name, obs_key, problems)
            except _DAMAGED as err:
                problems.append(f"data/{name}: damaged or incomplete ({err.__class__.__name__}: {err}); {_FIX}")
                continue
            if episode is not None:
                episodes.append(episode)
    if problems:
        raise DataError(path, problems)
    return episodes


def _filtered(path: Path, f, filter_key: str, demos: list[tuple[int, str]]) -> list[tuple[int, str]]:  # noqa: ANN001
    import h5py

    mask = f.get(f"mask/{filter_key}") if isinstance(f.get("mask"), h5py.Group) else None
    if not isinstance(mask, h5py.Dataset):
        available = list(f["mask"].keys()) if isinstance(f.get("mask"), h5py.Group) else []
        raise DataError(path, [f"no filter 'mask/{filter_key}'; available: {available}"])
    try:
        wanted = {n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(mask[()]).reshape(-1)}
    except _DAMAGED as err:
        raise DataError(path, [f"mask/{filter_key}: unreadable ({err}); store demo names as bytes"]) from None
    unknown = sorted(wanted - {name for _, name in demos})
    if unknown:
        raise DataError(path, [f"mask/{filter_key} names demos that are not in data/: {unknown[:10]}; fix the mask"])
    return [(n, name) for n, name in demos if name in wanted]


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


_PAIR_FIELDS = ("demo_a", "start_a", "demo_b", "start_b", "length")


def _preference_fields(path: Path, f) -> tuple[dict[str, np.ndarray], str]:  # noqa: ANN001
    """The ``preferences/`` columns, checked: 1-D, one length, integer indices, finite labels in [0, 1]."""
    import h5py

    group = f.get("preferences")
    if not isinstance(group, h5py.Group):
        raise DataError(path, ["no 'preferences' group: this file holds no segment-pair labels"])
    fields, problems = {}, []
    for name in (*_PAIR_FIELDS, "label"):
        item = group.get(name)
        if not isinstance(item, h5py.Dataset) or item.ndim != 1:
            what = "missing" if item is None else f"not a 1-D dataset ({getattr(item, 'shape', 'a group')})"
            problems.append(f"preferences/{name}: {what}; {_FIX}")
        elif item.dtype.kind not in ("iu" if name != "label" else "biuf"):
            want = "integers" if name != "label" else "P(a > b) as float32"
            problems.append(f"preferences/{name}: dtype {item.dtype}; store {want}")
        else:
            fields[name] = item[()]
    if not problems and len({len(v) for v in fields.values()}) > 1:
        sizes = {k: len(v) for k, v in fields.items()}
        problems.append(f"preferences: columns of different lengths {sizes}; one entry per pair in each")
    if not problems and len(fields["label"]) == 0:
        problems.append("preferences: holds 0 pairs; label some segment pairs or leave the group out")
    if problems:
        raise DataError(path, problems)
    return fields, str(group.attrs.get("teacher", ""))


def read_preference_pairs(path: str | Path, obs_key: str | None = None) -> list[SegmentPair]:
    """The segment pairs stored in ``preferences/``, rebuilt from the episodes they index.

    ``demo_a``/``demo_b`` are demo numbers (``data/demo_<n>``); each segment ``[start, start + length)`` must lie
    inside its demo, and ``label`` (P(a ≻ b)) must be finite and in [0, 1].

    Raises:
        DataError: naming the file, the pair (its index in ``preferences/``), the field and the fix.
    """
    path = Path(path)
    episodes = {int(e.source.rsplit("_", 1)[1]): e for e in read_robomimic(path, obs_key)}
    with _open(path) as f:
        try:
            fields, teacher = _preference_fields(path, f)
        except _DAMAGED as err:
            raise DataError(path, [f"preferences: damaged or incomplete ({err}); {_FIX}"]) from None
    problems: list[str] = []

    def segment(k: int, side: str) -> Segment | None:
        demo, start, length = (int(fields[n][k]) for n in (f"demo_{side}", f"start_{side}", "length"))
        where = f"preferences pair {k}: demo_{side}"
        if demo not in episodes:
            problems.append(f"{where} = {demo}, but data/demo_{demo} does not exist; fix the index or add the demo")
            return None
        ep = episodes[demo]
        if length < 1 or start < 0 or start + length > len(ep):
            problems.append(
                f"{where}: steps [{start}:{start + length}] (start_{side}, length) outside demo_{demo}'s "
                f"{len(ep)} steps; need 0 <= start, length >= 1, start + length <= {len(ep)}"
            )
            return None
        return episode_segment(ep, start, length, f"demo_{demo}:{start}")

    pairs = []
    for k in range(len(fields["label"])):
        label = float(fields["label"][k])
        a, b = segment(k, "a"), segment(k, "b")
        if not (0.0 <= label <= 1.0):  # also catches NaN
            problems.append(f"preferences pair {k}: label = {label}; P(a > b) must be in [0, 1] (0.5 = tie)")
        elif a is not None and b is not None:
            pairs.append(SegmentPair(id=f"pair{k}", a=a, b=b, label=label, teacher=teacher))
    if problems:
        raise DataError(path, problems)
    return pairs
