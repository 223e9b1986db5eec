"""A short PEBBLE-style loop on reach-v3: the learned reward agrees with the true return, and resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpref.control.envs import ExpertPolicy, make_env
from mmpref.control.pbrl.loop import PbRLConfig, PbRLLoop
from mmpref.control.segments import cut_segments, random_pairs, rollout

SHORT = dict(
    task="reach-v3",
    learning_starts=300,
    feedback_every=600,
    queries_per_round=60,
    max_labels=180,
    segment_length=25,
    reward_epochs=15,
    eval_every=1800,
    eval_episodes=1,
)


def test_short_loop_learns_a_reward_that_orders_segments_by_true_return():
    loop = PbRLLoop(PbRLConfig(total_steps=1800, **SHORT), progress=False)
    history = loop.run()
    assert history[-1]["labels"] == 180 and loop.teacher.budget.asked == 180
    # held-out segments from other policies (expert with several noise levels), never shown to the teacher
    env = make_env("reach-v3", seed=7)
    episodes = [
        rollout(env, ExpertPolicy("reach-v3", noise=n, seed=i), max_steps=150, seed=100 + i)
        for i, n in enumerate([0.0, 0.4, 0.8, 1.5, 3.0] * 2)
    ]
    pairs = random_pairs(cut_segments(episodes, 25), 400, np.random.default_rng(0))
    truth = np.array([p.a.rewards.sum() > p.b.rewards.sum() for p in pairs])
    agreement = ((loop.ensemble.pair_probabilities(pairs).mean(0) > 0.5) == truth).mean()
    print(f"agreement with the true return on held-out segment pairs: {agreement:.3f}")
    assert agreement >= 0.75  # chance is 0.5
    # the replay buffer was relabelled with the learned reward, not left with the true one
    buffer = loop.model.replay_buffer
    stored = buffer.rewards[: buffer.pos, 0]
    relabelled = loop.ensemble.step_reward(buffer.observations[: buffer.pos, 0], buffer.actions[: buffer.pos, 0])
    np.testing.assert_allclose(stored, relabelled, rtol=1e-5, atol=1e-5)


def test_normalised_learned_reward_is_standardised_over_the_buffer_and_per_step():
    settings = SHORT | {"feedback_every": 400, "eval_every": 800, "reward_normalize": True, "reward_scale": 3.0}
    # with the state-only, pessimistic variant of the learned reward, which must go through the same map
    settings |= {"reward_use_actions": False, "reward_pessimism": 0.5}
    loop = PbRLLoop(PbRLConfig(total_steps=800, **settings), progress=False)
    loop.run()
    buffer = loop.model.replay_buffer
    raw = loop.ensemble.step_reward(buffer.observations[: buffer.pos, 0], buffer.actions[: buffer.pos, 0], 0.5)
    # the affine map was fitted on the buffer at the last relabelling (step 800): mean 0, std = reward_scale
    stored = buffer.rewards[: buffer.pos, 0]
    assert abs(stored.mean()) < 1e-3 and stored.std() == pytest.approx(3.0, rel=1e-3)
    np.testing.assert_allclose(stored, (raw - loop.source.shift) * loop.source.scale, rtol=1e-4, atol=1e-4)
    # the reward SAC sees at a new step goes through the same map
    obs, act = buffer.observations[0, 0], buffer.actions[0, 0]
    assert loop.source(obs, act, obs, 0.0) == pytest.approx(float(stored[0]), rel=1e-4, abs=1e-4)


def test_checkpoint_resume_continues_exactly(tmp_path):
    # reward_normalize: the affine map of the learned reward is part of the state that must survive a resume
    settings = SHORT | {"feedback_every": 400, "eval_every": 1200, "reward_normalize": True}
    config = PbRLConfig(total_steps=1200, **settings)
    straight = PbRLLoop(config, progress=False)
    straight.run()
    interrupted = PbRLLoop(config, progress=False)
    interrupted.run(until=800, checkpoint=tmp_path / "ckpt")
    del interrupted
    resumed = PbRLLoop.load(tmp_path / "ckpt", progress=False)
    assert resumed.steps == 800 and len(resumed.labelled) == 120
    resumed.run()
    assert resumed.teacher.budget.asked == straight.teacher.budget.asked
    assert [p.label for p in resumed.labelled] == [p.label for p in straight.labelled]
    for a, b in zip(resumed.model.policy.parameters(), straight.model.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed_state, straight_state = resumed.ensemble.state_dict(), straight.ensemble.state_dict()
    np.testing.assert_array_equal(resumed_state["bootstrap"], straight_state["bootstrap"])
    for key, value in straight_state["system"].items():
        torch.testing.assert_close(resumed_state["system"][key], value, rtol=0, atol=0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="label budget"):
        PbRLConfig(max_labels=0)
    with pytest.raises(ValueError, match="reward_scale"):
        PbRLConfig(reward_scale=0.0)
    with pytest.raises(ValueError, match="reward_pessimism"):
        PbRLConfig(reward_pessimism=-1.0)
    with pytest.raises(ValueError, match="did you mean"):
        PbRLLoop(PbRLConfig(task="drawer-opne-v3"), progress=False)
