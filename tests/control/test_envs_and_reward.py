"""Meta-World env layer, query selection, and reward learning that recovers the true return order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpref.control.envs import ExpertPolicy, make_env
from mmpref.control.reward import RewardEnsemble, query_scores, select_queries
from mmpref.control.segments import cut_segments, random_pairs, rollout
from mmpref.control.teachers import ScriptedTeacher


def test_unknown_task_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean reach-v3"):
        make_env("reach-v2")


def test_goal_variation_off_keeps_one_goal_and_experts_succeed():
    env = make_env("reach-v3", seed=3, goal_variation=False)
    goals = {tuple(np.round(env.reset()[0][-3:], 6)) for _ in range(3)}
    assert len(goals) == 1
    varied = make_env("reach-v3", seed=3, goal_variation=True)
    assert len({tuple(np.round(varied.reset()[0][-3:], 6)) for _ in range(3)}) > 1
    episode = rollout(env, ExpertPolicy("reach-v3"), max_steps=200, source="expert")
    assert episode.succeeded and len(episode) == 200
    noisy = ExpertPolicy("reach-v3", noise=0.5, seed=1)
    obs = env.reset()[0]
    assert not np.allclose(noisy(obs), ExpertPolicy("reach-v3")(obs))
    assert np.all(np.abs(noisy(obs)) <= 1)


class _FixedEnsemble(RewardEnsemble):
    """A test double whose members' probabilities are given, to check the selection rule alone."""

    def __init__(self, probabilities):
        self.table = probabilities

    def pair_probabilities(self, pairs):
        return self.table[:, [int(p.id.removeprefix("pair")) for p in pairs]]


def test_query_selection_picks_the_highest_disagreement_pairs():
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(0.45, 0.55, size=(3, 40))
    probabilities[:, 7] = [0.05, 0.5, 0.95]  # strong disagreement
    probabilities[:, 21] = [0.2, 0.5, 0.8]
    probabilities[:, 33] = [0.5, 0.5, 0.5]  # agreement on a coin flip: high entropy, no disagreement
    scores = query_scores(probabilities, "disagreement")
    assert list(np.argsort(-scores)[:2]) == [7, 21]
    entropy = query_scores(probabilities, "entropy")
    # entropy sees only the mean: pairs 7 and 33 (mean 0.5) look alike to it, while only 7 is disputed
    assert entropy[33] == pytest.approx(entropy[7]) == pytest.approx(np.log(2))
    assert scores[33] == 0.0
    env = make_env("reach-v3", seed=0)
    segments = cut_segments([rollout(env, ExpertPolicy("reach-v3", noise=0.3), max_steps=100)], 10)
    candidates = random_pairs(segments, 40, rng)
    chosen = select_queries(candidates, 2, "disagreement", rng, _FixedEnsemble(probabilities), oversample=20)
    assert [p.id for p in chosen] == ["pair7", "pair21"]
    assert len(select_queries(candidates, 5, "uniform", rng)) == 5
    with pytest.raises(ValueError, match="needs a reward ensemble"):
        select_queries(candidates, 2, "entropy", rng)


def test_learned_reward_agrees_with_the_true_return_on_reach():
    env = make_env("reach-v3", seed=0)
    episodes = []
    for k, noise in enumerate([0.0, 0.3, 0.6, 1.0, 2.0] * 4):
        episodes.append(rollout(env, ExpertPolicy("reach-v3", noise=noise, seed=k), max_steps=150, seed=k))
    rng = np.random.default_rng(0)
    segments = cut_segments(episodes, 25)
    train_segments, test_segments = segments[::2], segments[1::2]
    teacher = ScriptedTeacher(seed=0)
    labelled = teacher.label_pairs(random_pairs(train_segments, 400, rng))
    ensemble = RewardEnsemble(39, 4, members=3, hidden=64, lr=1e-3, seed=0)
    test_pairs = random_pairs(test_segments, 500, rng)
    truth = np.array([p.a.rewards.sum() > p.b.rewards.sum() for p in test_pairs])
    before = ((ensemble.pair_probabilities(test_pairs).mean(0) > 0.5) == truth).mean()
    ensemble.fit(labelled, epochs=30, batch_size=64)
    after = ((ensemble.pair_probabilities(test_pairs).mean(0) > 0.5) == truth).mean()
    print(f"agreement with the true return order on held-out segment pairs: {before:.3f} -> {after:.3f}")
    assert after >= 0.85 and after > before + 0.2  # chance is 0.5
    # relabelling uses the mean step reward: it must rank the expert's transitions above very noisy ones
    expert, noisy = episodes[0], episodes[4]
    assert (
        ensemble.step_reward(expert.observations, expert.actions).mean()
        > ensemble.step_reward(noisy.observations, noisy.actions).mean()
    )


def test_fused_ensemble_matches_independent_members_forward_and_backward():
    import torch
    from torch import nn

    from mmpref.control.reward import EnsembleStepReward, SegmentReturnScorer

    fused = EnsembleStepReward(7, members=3, hidden=16, layers=3, seed=1).double()
    x = torch.randn(5, 4, 7, dtype=torch.float64)
    out = fused(x)
    assert out.shape == (3, 5, 4)
    for m in range(3):  # the oracle: member m as a plain nn.Sequential with the same weights
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(fused.weights, fused.biases, strict=True)):
            linear = nn.Linear(w.shape[1], w.shape[2]).double()
            with torch.no_grad():
                linear.weight.copy_(w[m].T)
                linear.bias.copy_(b[m, 0])
            layers += [linear, nn.LeakyReLU() if i < len(fused.weights) - 1 else nn.Tanh()]
        member = nn.Sequential(*layers)
        expected = member(x).squeeze(-1)
        torch.testing.assert_close(out[m], expected)
        expected.sum().backward()
        (grad_fused,) = torch.autograd.grad(fused(x)[m].sum(), fused.weights[0])
        torch.testing.assert_close(grad_fused[m], layers[0].weight.grad.T)
        torch.testing.assert_close(grad_fused[(m + 1) % 3], torch.zeros_like(grad_fused[0]))  # members independent
    scores = SegmentReturnScorer(fused, gamma=0.5)(x)
    weights = 0.5 ** torch.arange(3, -1, -1, dtype=torch.float64)
    torch.testing.assert_close(scores, (out * weights).sum(-1))


def test_bootstrap_weights_give_each_member_its_own_loss():
    import torch

    from mmpref.control.reward import EnsembleStepReward, SegmentReturnScorer
    from mmpref.losses import bradley_terry
    from mmpref.reward.system import RewardModelSystem

    system = RewardModelSystem(SegmentReturnScorer(EnsembleStepReward(3, members=2, hidden=8, layers=1)))
    x_a, x_b = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    label = torch.ones(6)
    weight = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0], [1.0, 2.0]])  # [B, M]
    loss = system.training_step({"x_a": x_a, "x_b": x_b, "label": label, "weight": weight}, 0)
    s_a, s_b = system(x_a), system(x_b)  # [M, B]
    per = bradley_terry(s_a, s_b)
    expected = torch.stack([(per[m] * weight[:, m]).sum() / weight[:, m].sum() for m in range(2)]).mean()
    torch.testing.assert_close(loss, expected)


def test_pessimistic_step_reward_is_the_members_mean_minus_lambda_std():
    import torch

    rng = np.random.default_rng(1)
    obs, act = rng.normal(size=(32, 39)).astype(np.float32), rng.normal(size=(32, 4)).astype(np.float32)
    ensemble = RewardEnsemble(39, 4, members=3, hidden=16, layers=2, seed=3)
    with torch.no_grad():  # each member by hand, from the fused weights (the oracle: numpy, no torch reductions)
        members = ensemble.scorer.step_reward(torch.from_numpy(np.concatenate([obs, act], -1))).numpy()
    mean = members.sum(0) / 3
    std = np.sqrt(((members - mean) ** 2).sum(0) / 3)
    np.testing.assert_allclose(ensemble.step_reward(obs, act), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble.step_reward(obs, act, pessimism=2.0), mean - 2.0 * std, rtol=1e-5, atol=1e-6)
    assert (std > 0).all()


def test_state_only_reward_ignores_actions_and_still_learns():
    env = make_env("reach-v3", seed=0)
    episodes = [
        rollout(env, ExpertPolicy("reach-v3", noise=noise, seed=k), max_steps=100, seed=k)
        for k, noise in enumerate([0.0, 0.5, 1.0, 3.0] * 3)
    ]
    segments = cut_segments(episodes, 25)
    rng = np.random.default_rng(0)
    labelled = ScriptedTeacher(seed=0).label_pairs(random_pairs(segments[::2], 300, rng))
    ensemble = RewardEnsemble(39, 4, members=3, hidden=64, lr=1e-3, seed=0, use_actions=False)
    ensemble.fit(labelled, epochs=30, batch_size=64)
    obs = episodes[0].observations
    np.testing.assert_array_equal(
        ensemble.step_reward(obs, np.zeros((len(obs), 4), np.float32)),
        ensemble.step_reward(obs, np.ones((len(obs), 4), np.float32)),
    )
    test_pairs = random_pairs(segments[1::2], 300, rng)
    truth = np.array([p.a.rewards.sum() > p.b.rewards.sum() for p in test_pairs])
    agreement = ((ensemble.pair_probabilities(test_pairs).mean(0) > 0.5) == truth).mean()
    assert agreement >= 0.8, agreement  # chance 0.5


@pytest.mark.parametrize("use_actions", [True, False])
def test_cached_labelled_features_give_the_same_fits_as_stacking_afresh(use_actions):
    """The labelled set's stacked features are reused across fits and RIME-style judgements: results stay exact."""
    from mmpref.control.reward import segment_features
    from mmpref.data import SegmentPair

    env = make_env("reach-v3", seed=0)
    episodes = [rollout(env, ExpertPolicy("reach-v3", noise=n, seed=k), 60, seed=k) for k, n in enumerate([0, 1, 2])]
    rng = np.random.default_rng(0)
    pairs = ScriptedTeacher(seed=0).label_pairs(random_pairs(cut_segments(episodes, 10), 40, rng))
    cached, fresh = (RewardEnsemble(39, 4, 3, hidden=16, layers=1, seed=1, use_actions=use_actions) for _ in "ab")

    def no_cache(pairs, keep=False):  # the reference: every call stacks everything again
        return segment_features(pairs, use_actions)

    fresh.features = no_cache
    for count, rows in ((20, None), (30, np.array([0, 3, 29, 3])), (40, np.arange(1, 40, 2))):
        labelled = pairs[:count]
        # RIME judges the grown set, flips some labels (new pair objects, same segments), fits on chosen rows
        probs = cached.pair_probabilities(labelled, chunk=7)
        np.testing.assert_array_equal(probs, fresh.pair_probabilities(labelled, chunk=7))
        used = [
            SegmentPair(id=p.id, a=p.a, b=p.b, label=1.0 - p.label) if i % 5 == 0 else p
            for i, p in enumerate(labelled)
        ]
        for ensemble in (cached, fresh):
            ensemble.fit(used, epochs=1, batch_size=8, updates=3, rows=rows)
        for a, b in zip(cached.system.parameters(), fresh.system.parameters(), strict=True):
            assert torch.equal(a, b)
    assert cached._cached_prefix(pairs[:40]) == 40  # the cache holds the labelled set
    other = random_pairs(cut_segments(episodes, 10), 50, rng)  # a query pool: other segments, not cached
    np.testing.assert_array_equal(cached.pair_probabilities(other), fresh.pair_probabilities(other))
    assert cached._cached_prefix(pairs[:40]) == 40
    np.testing.assert_array_equal(cached.features(pairs[:40])[0], segment_features(pairs[:40], use_actions)[0])
