"""The B-Pref teacher's parameters each change labels exactly as specified."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmpref.control.teachers import Budget, RatingTeacher, ScriptedTeacher
from mmpref.data import Segment, SegmentPair


def seg(rewards, name="s"):
    rewards = np.asarray(rewards, np.float64)
    return Segment(
        id=name, observations=np.zeros((len(rewards), 2)), actions=np.zeros((len(rewards), 1)), rewards=rewards
    )


def test_perfectly_rational_teacher_is_deterministic():
    teacher = ScriptedTeacher(beta=math.inf, seed=0)
    good, bad = seg([1, 1, 1]), seg([0, 0, 1])
    assert [teacher.label(good, bad) for _ in range(50)] == [1.0] * 50
    assert [teacher.label(bad, good) for _ in range(50)] == [0.0] * 50
    assert teacher.label(seg([1, 0]), seg([0, 1])) == 1.0  # an exact tie goes to the first, as in B-Pref


def test_finite_beta_samples_bradley_terry_and_large_beta_approaches_rational():
    a, b = seg([1.0]), seg([0.0])  # return gap 1
    for beta, want in [(0.5, 1 / (1 + math.exp(-0.5))), (2.0, 1 / (1 + math.exp(-2.0)))]:
        teacher = ScriptedTeacher(beta=beta, seed=1)
        share = np.mean([teacher.label(a, b) for _ in range(20_000)])
        assert share == pytest.approx(want, abs=0.01)
    teacher = ScriptedTeacher(beta=50.0, seed=2)
    assert all(teacher.label(a, b) == 1.0 for _ in range(1000))


def test_mistakes_flip_labels_at_rate_eps():
    teacher = ScriptedTeacher(eps=0.2, seed=3)
    labels = np.array([teacher.label(seg([1]), seg([0])) for _ in range(20_000)])
    assert set(np.unique(labels)) == {0.0, 1.0}
    assert (labels == 0).mean() == pytest.approx(0.2, abs=0.01)
    assert all(ScriptedTeacher(eps=1.0).label(seg([1]), seg([0])) == 0.0 for _ in range(10))
    # the teacher records exactly which labels it flipped (one entry per label given), and draws as before
    assert teacher.mistakes == (labels == 0).tolist()
    plain = ScriptedTeacher(eps=0.2, seed=3)
    pairs = [SegmentPair(id=f"p{i}", a=seg([i % 3]), b=seg([1]), label=0.5) for i in range(300)]
    answered = plain.label_pairs(pairs)
    truth = np.array([float(p.a.rewards.sum() >= p.b.rewards.sum()) for p in answered])
    assert plain.mistakes == (np.array([p.label for p in answered]) != truth).tolist() and any(plain.mistakes)


def test_myopia_weights_the_end_of_segments():
    early, late = seg([2.0, 0.0, 0.0]), seg([0.0, 0.0, 1.5])  # plain sums 2 > 1.5
    assert ScriptedTeacher(gamma=1.0).label(early, late) == 1.0
    # γ = 0.5: early = 2·0.25 = 0.5 < late = 1.5·1
    assert ScriptedTeacher(gamma=0.5).label(early, late) == 0.0
    assert ScriptedTeacher(gamma=0.5).weighted_return([2.0, 0.0, 1.5]) == pytest.approx(2.0)


def test_skip_and_equal_thresholds():
    teacher = ScriptedTeacher(skip_threshold=1.0, equal_threshold=0.3, eps=1.0, seed=4)
    assert teacher.label(seg([0.5]), seg([0.9])) is None  # both below the skip threshold: no label
    assert teacher.label(seg([1.2]), seg([0.1])) == 0.0  # one above: labelled (and flipped by eps = 1)
    assert teacher.label(seg([1.2]), seg([1.0])) == 0.5  # within the equal threshold: tie, even after a flip
    assert teacher.mistakes == [True, False]  # a tie is the truthful answer, not a mistake; a skip has no entry
    assert (teacher.budget.asked, teacher.budget.labelled, teacher.budget.skipped, teacher.budget.equal) == (
        3,
        2,
        1,
        1,
    )
    relative = ScriptedTeacher.with_relative_thresholds(10.0, skip_fraction=0.1, equal_fraction=0.05)
    assert relative.skip_threshold == 1.0 and relative.equal_threshold == 0.5


def test_budget_and_bad_parameters():
    teacher = ScriptedTeacher(budget=Budget(limit=2))
    teacher.label(seg([1]), seg([0]))
    teacher.label(seg([1]), seg([0]))
    with pytest.raises(RuntimeError, match="budget of 2 queries is spent"):
        teacher.label(seg([1]), seg([0]))
    with pytest.raises(ValueError, match="budget must be >= 1"):
        Budget(limit=0)
    for kwargs, message in [({"beta": 0}, "beta"), ({"gamma": 1.5}, "gamma"), ({"eps": -0.1}, "eps")]:
        with pytest.raises(ValueError, match=message):
            ScriptedTeacher(**kwargs)


def test_rating_teacher():
    teacher = RatingTeacher.from_returns(np.arange(100), levels=5)
    assert [teacher.rate([r]) for r in (0, 30, 50, 70, 99)] == [1, 2, 3, 4, 5]
