from __future__ import annotations

import math

import numpy as np
import pytest

from mmpref.control.regret.continuous import (
    ExpertValueOracle,
    SegmentRegretTeacher,
    rollout_with_values,
    segment_boundary_values,
)
from mmpref.control.segments import random_pairs
from mmpref.control.teachers import ScriptedTeacher
from mmpref.data import Segment, SegmentPair

TASK = "button-press-v3"


def _segment(name: str, rewards: list[float]) -> Segment:
    n = len(rewards)
    return Segment(id=name, observations=np.zeros((n, 3)), actions=np.zeros((n, 2)), rewards=np.array(rewards))


def test_constant_value_reduces_to_partial_return_labels():
    rng = np.random.default_rng(0)
    segments = [_segment(f"s{i}", list(rng.normal(size=10))) for i in range(40)]
    pairs = random_pairs(segments, 200, rng)
    b_pref = [p.label for p in ScriptedTeacher().label_pairs(pairs)]
    for gamma in (1.0, 0.9):
        teacher = SegmentRegretTeacher(value=lambda s: (3.0, 3.0), gamma=gamma)
        if gamma == 1.0:  # the score is exactly the partial return
            assert teacher.score(segments[0]) == pytest.approx(float(np.sum(segments[0].rewards)))
            assert [p.label for p in teacher.label_pairs(pairs)] == b_pref
        else:  # the constant adds (γ^T − 1)·3 to both scores: the discounted returns decide
            expected = [float(p.a.rewards @ 0.9 ** np.arange(10) >= p.b.rewards @ 0.9 ** np.arange(10)) for p in pairs]
            assert [p.label for p in teacher.label_pairs(pairs)] == expected


def test_value_terms_change_the_preference_by_hand():
    # equal rewards; a ends in a state worth 5 more than where it started, b loses 2: regret prefers a
    a, b = _segment("a", [1.0, 1.0]), _segment("b", [1.0, 1.0])
    values = {"a": (0.0, 5.0), "b": (4.0, 2.0)}
    teacher = SegmentRegretTeacher(value=lambda s: values[s.id], gamma=0.5)
    assert teacher.score(a) == pytest.approx(1 + 0.5 + 0.25 * 5 - 0)
    assert teacher.score(b) == pytest.approx(1 + 0.5 + 0.25 * 2 - 4)
    assert teacher.label(a, b) == 1.0 and teacher.label(b, a) == 0.0 and teacher.label(a, a) == 0.5
    noisy = SegmentRegretTeacher(value=lambda s: values[s.id], gamma=0.5, beta=0.5, seed=1)
    p = 1 / (1 + math.exp(-0.5 * (teacher.score(a) - teacher.score(b))))
    assert np.mean([noisy.label(a, b) for _ in range(4000)]) == pytest.approx(p, abs=0.02)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="gamma"):
        SegmentRegretTeacher(value=lambda s: (0.0, 0.0), gamma=0.0)
    teacher = SegmentRegretTeacher(value=lambda s: (math.nan, 0.0))
    with pytest.raises(ValueError, match="not finite"):
        teacher.score(_segment("x", [1.0]))
    no_rewards = Segment(id="y", observations=np.zeros((1, 3)), actions=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="no true rewards"):
        SegmentRegretTeacher(value=lambda s: (0.0, 0.0)).score(no_rewards)


@pytest.fixture(scope="module")
def metaworld_episodes():
    from mmpref.control.envs import ExpertPolicy, make_env

    env = make_env(TASK, seed=0)
    oracle = ExpertValueOracle(TASK, horizon=40, gamma=0.99)
    rng = np.random.default_rng(0)
    episodes, values = [], []
    for k, (name, policy) in enumerate(
        [("expert", ExpertPolicy(TASK, noise=0.1, seed=0)), ("random", lambda obs: rng.uniform(-1, 1, 4))]
    ):
        episode, v = rollout_with_values(env, policy, oracle, every=25, max_steps=100, seed=k, source=name)
        episodes.append(episode)
        values.append(v)
    return env, episodes, values


def test_state_restore_leaves_the_episode_unchanged(metaworld_episodes):
    from mmpref.control.envs import ExpertPolicy
    from mmpref.control.segments import rollout

    env, episodes, _ = metaworld_episodes
    plain = rollout(env, ExpertPolicy(TASK, noise=0.1, seed=0), max_steps=100, seed=0, source="expert")
    np.testing.assert_allclose(plain.observations, episodes[0].observations, atol=1e-6)
    np.testing.assert_allclose(plain.rewards, episodes[0].rewards, atol=1e-6)


def test_regret_teacher_prefers_expert_segments(metaworld_episodes):
    _, episodes, values = metaworld_episodes
    segments, table = segment_boundary_values(episodes, values, 25)
    teacher = SegmentRegretTeacher(value=lambda s: table[s.id], gamma=0.99)
    expert = [s for s in segments if s.source == "expert"]
    rand = [s for s in segments if s.source == "random"]
    pairs = [SegmentPair(id=f"p{i}{j}", a=e, b=r) for i, e in enumerate(expert) for j, r in enumerate(rand)]
    labels = np.array([p.label for p in teacher.label_pairs(pairs)])
    # the expert's segments make progress toward the button, random ones do not: ≥ 90 % of pairs (chance 50 %)
    assert labels.mean() >= 0.9
    # the expert's return from its own later states beats its return from where the random policy drifted to
    assert np.nanmean(values[0][25:]) > np.nanmean(values[1][25:])
    with pytest.raises(ValueError, match="compute V every 20"):
        segment_boundary_values(episodes, values, 20)
