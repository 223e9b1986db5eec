from __future__ import annotations

import numpy as np
import pytest

from mmpref.control.envs import ExpertPolicy, make_env
from mmpref.control.robomimic_io import read_preference_pairs, read_robomimic, write_robomimic
from mmpref.control.segments import cut_segments, random_pairs, rollout
from mmpref.control.teachers import RatingTeacher, ScriptedTeacher
from mmpref.data import DataError


@pytest.fixture
def dataset(tmp_path):
    env = make_env("reach-v3", seed=0)
    noises = [0.0, 0.5, 1.5]
    episodes = [
        rollout(env, ExpertPolicy("reach-v3", noise=n, seed=i), max_steps=60, seed=i, source="ep")
        for i, n in enumerate(noises)
    ]
    segments = cut_segments(episodes, 20)
    pairs = ScriptedTeacher(seed=0).label_pairs(random_pairs(segments, 12, np.random.default_rng(0)))
    rater = RatingTeacher.from_returns([s.rewards.sum() for s in segments])
    ratings = [(s, rater.rate(s.rewards)) for s in segments[:4]]
    path = write_robomimic(
        tmp_path / "reach.hdf5",
        episodes,
        "reach-v3",
        masks={"train": [0, 1], "valid": [2], "expert": [0]},
        pairs=pairs,
        ratings=ratings,
        qualities=noises,
    )
    return path, episodes, pairs


def test_round_trip_of_episodes_and_preferences(dataset):
    path, episodes, pairs = dataset
    back = read_robomimic(path)
    assert len(back) == 3
    np.testing.assert_array_equal(back[1].actions, episodes[1].actions)
    assert [e.source for e in read_robomimic(path, filter_key="valid")] == ["demo_2"]
    stored = read_preference_pairs(path)
    assert [p.label for p in stored] == [p.label for p in pairs]
    np.testing.assert_array_equal(stored[3].a.rewards, pairs[3].a.rewards)
    assert stored[0].teacher == "scripted"


def test_robomimic_sequence_dataset_loads_what_mmpref_writes(dataset):
    path, episodes, _ = dataset
    pytest.importorskip("robomimic")
    import robomimic.utils.obs_utils as obs_utils
    from robomimic.utils.dataset import SequenceDataset

    obs_utils.initialize_obs_modality_mapping_from_dict({"low_dim": ["state"]})
    ds = SequenceDataset(
        hdf5_path=str(path),
        obs_keys=("state",),
        dataset_keys=("actions", "rewards", "dones"),
        frame_stack=1,
        seq_length=10,
        pad_frame_stack=True,
        pad_seq_length=True,
        get_pad_mask=False,
        goal_mode=None,
        hdf5_cache_mode="low_dim",
        hdf5_use_swmr=True,
        hdf5_normalize_obs=False,
        filter_by_attribute="train",
    )
    assert len(ds) == len(episodes[0]) + len(episodes[1])
    item = ds[0]
    assert item["obs"]["state"].shape == (10, 39) and item["actions"].shape == (10, 4)
    np.testing.assert_allclose(item["actions"], episodes[0].actions[:10], rtol=1e-6)


def test_damaged_files_are_explained(tmp_path, dataset):
    (tmp_path / "junk.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        read_robomimic(tmp_path / "junk.hdf5")
    with pytest.raises(DataError, match="file not found"):
        read_robomimic(tmp_path / "absent.hdf5")
    with pytest.raises(DataError, match="no filter 'mask/test'"):
        read_robomimic(dataset[0], filter_key="test")
