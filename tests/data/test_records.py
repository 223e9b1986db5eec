from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmpref.data import PreferenceList, PreferencePair, Rating, RecordError, Segment, SegmentPair


def test_pair_validation_and_properties():
    pair = PreferencePair(id="p", a="a.png", b="b.png", label=0)
    assert pair.winner == "b.png" and pair.loser == "a.png"
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.label = 1.0  # type: ignore[misc]
    with pytest.raises(RecordError, match=r"field 'label' = 1.5 is outside \[0, 1\]"):
        PreferencePair(id="p", a="a", b="b", label=1.5)
    with pytest.raises(RecordError, match="field 'label' is NaN"):
        PreferencePair(id="p", a="a", b="b", label=float("nan"))
    with pytest.raises(RecordError, match="field 'id'"):
        PreferencePair(id="", a="a", b="b")
    with pytest.raises(RecordError, match=r"feature shapes \(3,\) and \(4,\)"):
        PreferencePair(id="p", a=np.zeros(3), b=np.zeros(4))
    with pytest.raises(RecordError, match="NaN or inf features"):
        PreferencePair(id="p", a=np.array([np.nan]), b=np.zeros(1))
    with pytest.raises(RecordError, match="tie and has no winner"):
        _ = PreferencePair(id="p", a="a", b="b", label=0.5).winner


def test_list_and_rating_validation():
    ranked = PreferenceList.from_ranking("l", ["best", "mid", "worst"])
    assert ranked.scores == (2.0, 1.0, 0.0)
    with pytest.raises(RecordError, match="'items' has 3 entries but 'scores' has 2"):
        PreferenceList(id="l", items=("a", "b", "c"), scores=(1, 2))
    with pytest.raises(RecordError, match="field 'scores' is inf"):
        PreferenceList(id="l", items=("a", "b"), scores=(1, float("inf")))
    assert Rating(id="r", item="a", rating=3, scale=(1, 5)).normalized == 0.5
    with pytest.raises(RecordError, match=r"outside the scale \[1.0, 5.0\]"):
        Rating(id="r", item="a", rating=0)
    with pytest.raises(RecordError, match="low < high"):
        Rating(id="r", item="a", rating=1, scale=(5, 1))


def test_segments():
    obs, act = np.zeros((5, 3)), np.zeros((5, 2))
    seg = Segment(id="s", observations=obs, actions=act, rewards=np.arange(5.0))
    assert len(seg) == 5
    assert seg.discounted_return() == 10.0
    # Myopic weights γ^(T−1−t): the last step counts fully.
    assert seg.discounted_return(0.5) == pytest.approx(4 + 3 * 0.5 + 2 * 0.25 + 1 * 0.125)
    with pytest.raises(RecordError, match=r"'observations' \(5, 3\) and 'actions' \(4, 2\)"):
        Segment(id="s", observations=obs, actions=np.zeros((4, 2)))
    with pytest.raises(RecordError, match=r"'rewards' has shape \(4,\), expected \(5,\)"):
        Segment(id="s", observations=obs, actions=act, rewards=np.zeros(4))
    short = Segment(id="t", observations=np.zeros((3, 3)), actions=np.zeros((3, 2)))
    with pytest.raises(RecordError, match="5 and 3 steps"):
        SegmentPair(id="sp", a=seg, b=short)
    assert SegmentPair(id="sp", a=seg, b=seg, label=0.5).label == 0.5
