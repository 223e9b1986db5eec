"""robomimic HDF5 (``read_robomimic``, ``read_preference_pairs``, ``mmpref cpl --dataset``): generated bad files.

Each case starts from a valid file written by ``write_robomimic`` and breaks one thing with h5py (a length, a value,
a dtype, a shape, a name, a link, an index, the bytes of the file). The readers must raise one ``DataError`` that
names the file and, where there is one, the demo and the field: never an ``IndexError`` later, never NaN passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from mmpref.control.robomimic_io import read_preference_pairs, read_robomimic, write_robomimic  # noqa: E402
from mmpref.control.segments import Episode, cut_segments  # noqa: E402
from mmpref.data import DataError, SegmentPair  # noqa: E402

STEPS, OBS, ACT = 12, 5, 3


def _episodes(n: int = 3, steps: int = STEPS) -> list[Episode]:
    rng = np.random.default_rng(0)
    return [
        Episode(
            rng.normal(size=(steps, OBS)).astype(np.float32),
            rng.uniform(-1, 1, size=(steps, ACT)).astype(np.float32),
            rng.normal(size=steps).astype(np.float32),
            rng.normal(size=(steps, OBS)).astype(np.float32),
            np.zeros(steps, np.float32),
            source="ep",
        )
        for _ in range(n)
    ]


def write_valid(path: Path) -> Path:
    """A small valid file: 3 demos of 12 steps, 4 labelled pairs of 4-step segments."""
    episodes = _episodes()
    segments = cut_segments(episodes, 4)
    pairs = [SegmentPair(f"p{i}", segments[i], segments[-1 - i], label=float(i % 2)) for i in range(4)]
    return write_robomimic(path, episodes, "reach-v3", pairs=pairs, masks={"train": [0, 1], "valid": [2]})


def _replace(group, name: str, data) -> None:  # noqa: ANN001
    del group[name]
    group.create_dataset(name, data=data)


# --- generated mutations: (case id, mutate(h5py.File), words the message must contain) --------------------------

Mutation = tuple[str, Callable, tuple[str, ...]]
PER_STEP = {"obs": "obs/state", "next_obs": "next_obs/state", "actions": "actions", "rewards": "rewards"}


def _field(f, demo: str, field: str):  # noqa: ANN001, ANN202
    return f[f"data/{demo}/{PER_STEP[field]}"]


def _set_field(f, demo: str, field: str, data) -> None:  # noqa: ANN001
    group_path, _, name = f"data/{demo}/{PER_STEP[field]}".rpartition("/")
    _replace(f[group_path], name, data)


def _length_cases() -> list[Mutation]:
    cases = []
    for field in PER_STEP:
        for delta in (-1, +2, -(STEPS - 1)):

            def mutate(f, field=field, delta=delta):  # noqa: ANN001, ANN202
                old = _field(f, "demo_1", field)[()]
                new = old[:delta] if delta < 0 else np.concatenate([old, old[:delta]])
                _set_field(f, "demo_1", field, new)

            cases.append((f"length-{field}{delta:+d}", mutate, ("demo_1", field.split("_")[-1])))
    return cases


def _value_cases() -> list[Mutation]:
    cases = []
    for field in PER_STEP:
        for bad in (np.nan, np.inf, -np.inf, 1e300):
            for step in (0, STEPS // 2, STEPS - 1):

                def mutate(f, field=field, bad=bad, step=step):  # noqa: ANN001, ANN202
                    arr = _field(f, "demo_2", field)[()].astype(np.float64)
                    arr[step] = bad
                    _set_field(f, "demo_2", field, arr)

                cases.append((f"value-{field}-{bad}-step{step}", mutate, ("demo_2", field.split("_")[-1], "NaN/inf")))
    return cases


def _dtype_shape_cases() -> list[Mutation]:
    cases = []
    for field in PER_STEP:
        steps_first = {
            "strings": np.array([b"x"] * STEPS),
            "complex": np.ones((STEPS, OBS), np.complex64),
            "compound": np.zeros(STEPS, dtype=[("a", "f4"), ("b", "i4")]),
            "scalar": np.float32(1.0),
            "3-D": np.zeros((STEPS, 2, 2), np.float32),
        }
        if field != "rewards":
            steps_first["1-D"] = np.zeros(STEPS, np.float32)
        else:
            steps_first["2-D wide"] = np.zeros((STEPS, 2), np.float32)
        for kind, data in steps_first.items():

            def mutate(f, field=field, data=data):  # noqa: ANN001, ANN202
                _set_field(f, "demo_0", field, data)

            cases.append((f"dtype-{field}-{kind}", mutate, ("demo_0", field.split("_")[-1])))
    return cases


def _structure_cases() -> list[Mutation]:
    def delete(path):  # noqa: ANN001, ANN202
        return lambda f: f.__delitem__(path)

    def group_instead(path):  # noqa: ANN001, ANN202
        def mutate(f):  # noqa: ANN001, ANN202
            del f[path]
            f.create_group(path)

        return mutate

    def dangling(path):  # noqa: ANN001, ANN202
        def mutate(f):  # noqa: ANN001, ANN202
            del f[path]
            f[path] = h5py.SoftLink("/nowhere/at/all")

        return mutate

    def rename(old, new):  # noqa: ANN001, ANN202
        return lambda f: f.move(f"data/{old}", f"data/{new}")

    def set_attr(path, key, value):  # noqa: ANN001, ANN202
        return lambda f: f[path].attrs.__setitem__(key, value)

    def zero_steps(f):  # noqa: ANN001, ANN202
        for field in PER_STEP:
            old = _field(f, "demo_1", field)[()]
            _set_field(f, "demo_1", field, old[:0])

    def empty_data(f):  # noqa: ANN001, ANN202
        for name in list(f["data"]):
            del f[f"data/{name}"]

    def data_dataset(f):  # noqa: ANN001, ANN202
        del f["data"]
        f.create_dataset("data", data=np.zeros(3))

    def demo_dataset(f):  # noqa: ANN001, ANN202
        del f["data/demo_1"]
        f["data"].create_dataset("demo_1", data=np.zeros(3))

    cases: list[Mutation] = [
        ("missing-obs-group", delete("data/demo_1/obs"), ("demo_1", "obs")),
        ("missing-obs-key", delete("data/demo_1/obs/state"), ("demo_1", "obs")),
        ("missing-actions", delete("data/demo_1/actions"), ("demo_1", "actions", "missing")),
        ("missing-rewards", delete("data/demo_1/rewards"), ("demo_1", "rewards", "missing")),
        ("missing-next-obs-key", delete("data/demo_1/next_obs/state"), ("demo_1", "next_obs")),
        ("group-actions", group_instead("data/demo_1/actions"), ("demo_1", "actions")),
        ("group-obs-key", group_instead("data/demo_1/obs/state"), ("demo_1", "obs")),
        ("dangling-actions", dangling("data/demo_1/actions"), ("demo_1", "actions")),
        ("dangling-obs", dangling("data/demo_1/obs"), ("demo_1", "obs")),
        ("zero-steps", zero_steps, ("demo_1", "0 steps")),
        ("no-data", delete("data"), ("'data'",)),
        ("data-is-dataset", data_dataset, ("'data'",)),
        ("empty-data", empty_data, ("no demos",)),
        ("demo-is-dataset", demo_dataset, ("demo_1", "not a group")),
        ("success-attr-text", set_attr("data/demo_0", "success", "yes please"), ("demo_0", "success")),
        ("success-attr-empty", set_attr("data/demo_0", "success", np.zeros(0)), ("demo_0", "success")),
    ]
    for bad_name in ("demo_x", "demo", "traj_1", "demo_-1", "demo_1.5", "Demo_1", "demo_1_b", "demo_ 1", "démo_1"):
        cases.append((f"name-{bad_name}", rename("demo_1", bad_name), (bad_name, "demo_<int>")))
    cases.append(("name-duplicate-number", rename("demo_2", "demo_01"), ("demo_01", "same number")))
    return cases


def _preference_cases() -> list[Mutation]:
    def set_column(name, values):  # noqa: ANN001, ANN202
        return lambda f: _replace(f["preferences"], name, values)

    def set_one(name, k, value):  # noqa: ANN001, ANN202
        def mutate(f):  # noqa: ANN001, ANN202
            column = f[f"preferences/{name}"][()]
            column[k] = value
            _replace(f["preferences"], name, column)

        return mutate

    cases: list[Mutation] = []
    for side in ("a", "b"):
        for demo in (3, 99, -1, -3, 2**40):
            cases.append((f"pair-demo_{side}={demo}", set_one(f"demo_{side}", 1, demo), (f"demo_{side}", "pair 1")))
        for start in (-1, -12, STEPS - 3, STEPS, 2**40):
            cases.append(
                (f"pair-start_{side}={start}", set_one(f"start_{side}", 2, start), (f"start_{side}", "pair 2"))
            )
    for length in (0, -4, STEPS + 1):
        cases.append((f"pair-length={length}", set_one("length", 0, length), ("length", "pair 0")))
    for label in (np.nan, np.inf, 1.5, -0.1):
        cases.append((f"pair-label={label}", set_one("label", 3, label), ("label", "pair 3")))
    for name in ("demo_a", "start_b", "length", "label"):
        cases.append(
            (f"pair-missing-{name}", lambda f, n=name: f["preferences"].__delitem__(n), (f"preferences/{name}",))
        )
        cases.append(
            (
                f"pair-short-{name}",
                lambda f, n=name: _replace(f["preferences"], n, f[f"preferences/{n}"][:2]),
                ("different lengths",),
            )
        )
    cases += [
        ("pair-float-demo", set_column("demo_a", np.array([0.0, 1.0, 2.0, 0.0])), ("preferences/demo_a", "dtype")),
        ("pair-text-label", set_column("label", np.array([b"a", b"b", b"c", b"d"])), ("preferences/label", "dtype")),
        ("pair-2d-start", set_column("start_a", np.zeros((4, 2), np.int64)), ("preferences/start_a", "1-D")),
        (
            "pair-empty",
            lambda f: [_replace(f["preferences"], n, f[f"preferences/{n}"][:0]) for n in list(f["preferences"])],
            ("0 pairs",),
        ),
        ("pair-no-group", lambda f: f.__delitem__("preferences"), ("'preferences'",)),
        (
            "pair-group-is-dataset",
            lambda f: (f.__delitem__("preferences"), f.create_dataset("preferences", data=[1])),
            ("'preferences'",),
        ),
    ]
    return cases


EPISODE_CASES = _length_cases() + _value_cases() + _dtype_shape_cases() + _structure_cases()
PAIR_CASES = _preference_cases()


def _mutated(tmp_path: Path, mutate: Callable) -> Path:
    path = write_valid(tmp_path / "data.hdf5")
    with h5py.File(path, "r+") as f:
        mutate(f)
    return path


def _assert_names(err: DataError, path: Path, words: tuple[str, ...]) -> None:
    message = str(err)
    assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


@pytest.mark.parametrize(("case", "mutate", "words"), EPISODE_CASES, ids=[c[0] for c in EPISODE_CASES])
def test_bad_episodes_raise_one_data_error(tmp_path, case, mutate, words):
    path = _mutated(tmp_path, mutate)
    with pytest.raises(DataError) as info:
        read_robomimic(path)
    _assert_names(info.value, path, words)
    with pytest.raises(DataError):  # the pairs reader reads the episodes first: the same error, never later
        read_preference_pairs(path)


@pytest.mark.parametrize(("case", "mutate", "words"), PAIR_CASES, ids=[c[0] for c in PAIR_CASES])
def test_bad_preferences_raise_one_data_error(tmp_path, case, mutate, words):
    path = _mutated(tmp_path, mutate)
    assert len(read_robomimic(path)) == 3  # the episodes themselves are fine
    with pytest.raises(DataError) as info:
        read_preference_pairs(path)
    _assert_names(info.value, path, words)


def test_pairs_index_demos_by_number_not_position(tmp_path):
    """A file whose demos are demo_0, demo_2, demo_5: pairs name demo numbers, and a gap is not shifted over."""
    path = write_valid(tmp_path / "data.hdf5")
    with h5py.File(path, "r+") as f:
        f.move("data/demo_2", "data/demo_5")
        f.move("data/demo_1", "data/demo_2")
        expected = f["data/demo_5/actions"][4:8]
        column = f["preferences/demo_a"][()]
        column[:] = [5, 2, 0, 5]
        _replace(f["preferences"], "demo_a", column)
        _replace(f["preferences"], "start_a", np.array([4, 0, 0, 0]))
        _replace(f["preferences"], "demo_b", np.array([0, 0, 2, 2]))
        _replace(f["mask"], "train", np.array([b"demo_0", b"demo_2"]))
        _replace(f["mask"], "valid", np.array([b"demo_5"]))
    assert [e.source for e in read_robomimic(path)] == ["demo_0", "demo_2", "demo_5"]
    pairs = read_preference_pairs(path)
    np.testing.assert_array_equal(pairs[0].a.actions, expected)
    with h5py.File(path, "r+") as f:
        column = f["preferences/demo_a"][()]
        column[1] = 1  # the position of demo_2, but no demo_1 exists
        _replace(f["preferences"], "demo_a", column)
    with pytest.raises(DataError, match="demo_1 does not exist"):
        read_preference_pairs(path)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_truncated_files(tmp_path, fraction):
    """A file cut short: a ``DataError`` naming it, or (if only free space was cut) exactly the original data."""
    good = write_valid(tmp_path / "good.hdf5")
    data = good.read_bytes()
    path = tmp_path / "cut.hdf5"
    path.write_bytes(data[: int(len(data) * fraction)])
    try:
        episodes = read_robomimic(path)
        pairs = read_preference_pairs(path)
    except DataError as err:
        assert str(path) in str(err)
        return
    reference = read_robomimic(good)
    assert len(pairs) == 4 and len(episodes) == len(reference)
    for e, r in zip(episodes, reference, strict=True):
        np.testing.assert_array_equal(e.observations, r.observations)


NOT_HDF5 = {
    "empty": b"",
    "text": b"demo_0,actions\n1,2\n",
    "json": b'{"data": {"demo_0": {}}}',
    "png-magic": b"\x89PNG\r\n\x1a\n" + bytes(64),
    "hdf5-magic-only": b"\x89HDF\r\n\x1a\n",
    "hdf5-magic-garbage": b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4,
    "zeros": bytes(4096),
}


@pytest.mark.parametrize("kind", sorted(NOT_HDF5))
def test_non_hdf5_files(tmp_path, kind):
    path = tmp_path / f"{kind}.hdf5"
    path.write_bytes(NOT_HDF5[kind])
    for reader in (read_robomimic, read_preference_pairs):
        with pytest.raises(DataError) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_robomimic(tmp_path)
    with pytest.raises(DataError, match="not found"):
        read_robomimic(tmp_path / "nothing.hdf5")


def test_mask_naming_a_missing_demo(tmp_path):
    path = write_valid(tmp_path / "data.hdf5")
    with h5py.File(path, "r+") as f:
        _replace(f["mask"], "valid", np.array([b"demo_2", b"demo_7"]))
    with pytest.raises(DataError, match="demo_7"):
        read_robomimic(path, filter_key="valid")
    with pytest.raises(DataError, match="no filter 'mask/test'"):
        read_robomimic(path, filter_key="test")


# --- property-based: arbitrary arrays in the per-step fields -----------------------------------------------------

_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_])


@st.composite
def _demo_arrays(draw):  # noqa: ANN001, ANN202
    steps = draw(st.integers(0, 6))
    fields = {}
    for name, width in (("obs", 3), ("next_obs", 3), ("actions", 2), ("rewards", None)):
        t = draw(st.sampled_from([steps, steps, steps, max(steps - 1, 0), steps + 1]))
        if width is None:
            shape = draw(st.sampled_from([(t,), (t,), (t, 1), (t, 2)]))
        else:
            shape = draw(st.sampled_from([(t, width), (t, width), (t,), (t, width, 1)]))
        elements = st.floats(allow_nan=True, allow_infinity=True, width=64) if draw(st.booleans()) else None
        dtype = np.float64 if elements is not None else draw(_DTYPES)
        fields[name] = draw(hnp.arrays(dtype, shape, elements=elements))
    return fields


def _is_valid(fields: dict[str, np.ndarray]) -> bool:
    obs, nxt, act, rew = (fields[k] for k in ("obs", "next_obs", "actions", "rewards"))
    if obs.ndim != 2 or nxt.ndim != 2 or act.ndim != 2 or not (rew.ndim == 1 or (rew.ndim == 2 and rew.shape[1] == 1)):
        return False
    if len(act) == 0 or not (len(obs) == len(nxt) == len(act) == len(rew)) or nxt.shape[1:] != obs.shape[1:]:
        return False
    return all(np.isfinite(v.astype(np.float32)).all() for v in fields.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=_demo_arrays())
def test_any_demo_is_read_exactly_or_refused_naming_it(tmp_path_factory, fields):
    path = tmp_path_factory.mktemp("prop") / "demo.hdf5"
    with h5py.File(path, "w") as f:
        demo = f.create_group("data/demo_0")
        demo.create_group("obs").create_dataset("state", data=fields["obs"])
        demo.create_group("next_obs").create_dataset("state", data=fields["next_obs"])
        demo.create_dataset("actions", data=fields["actions"])
        demo.create_dataset("rewards", data=fields["rewards"])
    if _is_valid(fields):
        (episode,) = read_robomimic(path)
        np.testing.assert_array_equal(episode.actions, fields["actions"].astype(np.float32))
        assert episode.rewards.shape == (len(episode),)
        assert all(np.isfinite(a).all() for a in (episode.observations, episode.actions, episode.rewards))
    else:
        with pytest.raises(DataError) as info:
            read_robomimic(path)
        assert str(path) in str(info.value) and "demo_0" in str(info.value)


# --- the CLI job that reads these files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["length-actions-1", "value-obs-nan-step6", "name-demo_x", "pair-demo_a=99", "pair-label=nan", "not-hdf5"],
)
def test_cpl_job_exits_2_naming_the_file(tmp_path, case, checks):
    cases = {c[0]: c[1] for c in EPISODE_CASES + PAIR_CASES}
    if case == "not-hdf5":
        path = tmp_path / "data.hdf5"
        path.write_bytes(b"not an hdf5 file\n")
    else:
        path = _mutated(tmp_path, cases[case])
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"previous": "run"}')
    before = checks.snapshot(tmp_path)
    result = checks.run_cli(["cpl", "--dataset", path, "--task", "reach-v3", "--eval_episodes", "0", "--out", out])
    checks.assert_clean_error(result, path.name, job="cpl")
    checks.assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("goals", ["51", "-1"])
def test_cpl_job_refuses_more_evaluation_goals_than_a_task_has(tmp_path, goals, checks):
    result = checks.run_cli(["cpl", "--task", "reach-v3", "--eval_goals", goals, "--out", tmp_path / "out"])
    checks.assert_clean_error(result, "eval_goals", job="cpl")
    assert not (tmp_path / "out").exists()


@st.composite
def _pair_columns(draw):  # noqa: ANN001, ANN202
    k = draw(st.integers(1, 5))
    ints = {
        name: draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k))
        for name, lo, hi in (
            ("demo_a", -2, 4),
            ("demo_b", -2, 4),
            ("start_a", -3, STEPS + 2),
            ("start_b", -3, STEPS + 2),
            ("length", -1, STEPS + 1),
        )
    }
    labels = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=k, max_size=k))
    return ints, labels


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(columns=_pair_columns())
def test_any_preference_columns_are_read_exactly_or_refused(tmp_path_factory, columns):
    ints, labels = columns
    path = write_valid(tmp_path_factory.mktemp("pairs") / "data.hdf5")
    with h5py.File(path, "r+") as f:
        for name, values in ints.items():
            _replace(f["preferences"], name, np.array(values, np.int64))
        _replace(f["preferences"], "label", np.array(labels, np.float32))
    ok = all(
        0 <= ints[f"demo_{s}"][k] <= 2
        and ints[f"start_{s}"][k] >= 0
        and ints["length"][k] >= 1
        and ints[f"start_{s}"][k] + ints["length"][k] <= STEPS
        for k in range(len(labels))
        for s in "ab"
    ) and all(0.0 <= x <= 1.0 for x in labels)
    if ok:
        pairs = read_preference_pairs(path)
        episodes = read_robomimic(path)
        for k, pair in enumerate(pairs):
            start, length = ints["start_a"][k], ints["length"][k]
            expected = episodes[ints["demo_a"][k]].actions[start : start + length]
            np.testing.assert_array_equal(pair.a.actions, expected)
            assert pair.label == np.float32(labels[k])
    else:
        with pytest.raises(DataError) as info:
            read_preference_pairs(path)
        assert str(path) in str(info.value) and "preferences pair" in str(info.value)
