from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, TanhTransform, TransformedDistribution

from mmpref.control.peeling.dpo import (
    FinetuneConfig,
    by_window,
    credit_to_go,
    finetune_loss,
    frozen_copy,
    group_dpo_loss,
    group_finetune_loss,
    rank_pairs,
    round_objective,
    trajectory_dpo_loss,
    trajectory_score,
)
from mmpref.control.peeling.finetune import FinetuneLog, preference_finetune, validation_score
from mmpref.control.peeling.fused_reward import (
    FusedTrajectoryScorer,
    RewardRefit,
    fit_fused_reward,
    score_trajectories,
    trajectory_features,
)
from mmpref.control.peeling.metric import (
    metric_scores,
    outcome,
    progress_steps,
    segment_metric,
    true_return_scores,
    window_edges,
    window_episodes,
)
from mmpref.control.policies import GaussianPolicy, ResidualPolicy
from mmpref.control.segments import Episode, rollout
from mmpref.control.teachers import RatingTeacher
from mmpref.reward.system import RewardModelSystem


def _episode(object_x: list[float], actions: np.ndarray | None = None, goal_x: float = 1.0) -> Episode:
    """An episode whose object moves along x (positions before each step, plus the final one) toward a goal."""
    steps = len(object_x) - 1
    obs = np.zeros((steps + 1, 39), np.float32)
    obs[:, 4] = object_x
    obs[:, 36] = goal_x
    actions = np.zeros((steps, 4), np.float32) if actions is None else actions.astype(np.float32)
    return Episode(obs[:-1], actions, np.zeros(steps, np.float32), obs[1:], np.zeros(steps, np.float32))


def test_progress_metric_by_hand():
    # the object goes 0 -> 0.5 -> 0.25 -> 0.75 with the goal at x = 1: d = 1, 0.5, 0.75, 0.25
    actions = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]], np.float32)
    ep = _episode([0.0, 0.5, 0.25, 0.75], actions)
    np.testing.assert_allclose(
        progress_steps(ep.observations, ep.next_observations, ep.actions), [0.5, -0.25, 0.5], atol=1e-6
    )
    # jerk: ‖a_t − a_{t−1}‖² = 0, 1, 1 with λ = 0.1
    np.testing.assert_allclose(
        progress_steps(ep.observations, ep.next_observations, ep.actions, smoothness=0.1), [0.5, -0.35, 0.4], atol=1e-6
    )
    np.testing.assert_allclose(segment_metric(ep, 1), [0.5, -0.25, 0.5], atol=1e-6)
    np.testing.assert_allclose(segment_metric(ep, 2), [0.25], atol=1e-6)  # the last partial segment is dropped
    result = outcome(ep)
    assert result.progress == pytest.approx(0.75) and not result.success
    # the metric alone per trajectory: the steps summed (final progress 0.75; minus 0.1 · 2 of jerk)
    np.testing.assert_allclose(metric_scores([ep, ep]), [0.75, 0.75], atol=1e-6)
    np.testing.assert_allclose(metric_scores([ep], smoothness=0.1), [0.55], atol=1e-6)
    assert result.jerk == pytest.approx((1 + 1) / 2)


def test_log_distance_metric_by_hand():
    # the same path as above, d = 1, 0.5, 0.75, 0.25, with ε = 0.25: the span log((1 + ε)/ε) = log 5 = 1.609438;
    # steps log(1.25/0.75) = 0.510826, log(0.75/1.0) = −0.287682, log(1.0/0.5) = 0.693147, each over the span
    ep = _episode([0.0, 0.5, 0.25, 0.75])
    steps = progress_steps(ep.observations, ep.next_observations, ep.actions, log_floor=0.25)
    np.testing.assert_allclose(steps, [0.317395, -0.178747, 0.430677], atol=1e-5)
    # summed: log(1.25/0.5) / log 5 = 0.569323 (linear progress would give 0.75)
    np.testing.assert_allclose(metric_scores([ep], log_floor=0.25), [0.569323], atol=1e-5)
    np.testing.assert_allclose(segment_metric(ep, 3, log_floor=0.25), [0.569323], atol=1e-5)
    # reaching the goal exactly scores 1, as linear progress does; jerk is subtracted as before
    np.testing.assert_allclose(metric_scores([_episode([0.0, 0.5, 1.0])], log_floor=0.05), [1.0], atol=1e-6)
    jerky = _episode([0.0, 0.5, 1.0], np.array([[0, 0, 0, 0], [1, 0, 0, 0]], np.float32))
    np.testing.assert_allclose(metric_scores([jerky], smoothness=0.1, log_floor=0.05), [0.9], atol=1e-6)
    # the first and the last 0.1 of one path (d 1 → 0.9 → 0.2 → 0.1): equal on the linear scale; on the log
    # scale (ε = 0.05) the last, log(0.25/0.15), is over 5 times the first, log(1.05/0.95) (both over log 21)
    path = _episode([0.0, 0.1, 0.8, 0.9])
    linear = progress_steps(path.observations, path.next_observations, path.actions)
    np.testing.assert_allclose(linear, [0.1, 0.7, 0.1], atol=1e-6)
    log_steps = progress_steps(path.observations, path.next_observations, path.actions, log_floor=0.05)
    span = np.log(1.05 / 0.05)
    np.testing.assert_allclose(log_steps[[0, 2]], [np.log(1.05 / 0.95) / span, np.log(0.25 / 0.15) / span], atol=1e-5)
    assert log_steps[2] > 5 * log_steps[0]
    with pytest.raises(ValueError, match="log_floor"):
        progress_steps(ep.observations, ep.next_observations, ep.actions, log_floor=-0.1)


def test_metric_errors_name_the_shapes():
    with pytest.raises(ValueError, match="39"):
        progress_steps(np.zeros((5, 10)), np.zeros((5, 10)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="share T"):
        progress_steps(np.zeros((5, 39)), np.zeros((4, 39)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="one length"):
        trajectory_features([_episode([0, 1]), _episode([0, 1, 2])])


def _reference_log_prob(policy: GaussianPolicy, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Σ_t log π(a_t|s_t) with torch.distributions (independent of the policy's own formula), one step at a time."""
    total = torch.zeros(obs.shape[0], dtype=torch.float64)
    for b in range(obs.shape[0]):
        for t in range(obs.shape[1]):
            mean, log_std = (v.double() for v in policy(obs[b, t]))
            base = Normal(mean, log_std.exp())
            a = actions[b, t].double()
            if policy.squash == "tanh":
                a = a.clamp(-1 + policy.action_eps, 1 - policy.action_eps)
                dist = Independent(TransformedDistribution(base, [TanhTransform()]), 1)
            else:
                dist = Independent(base, 1)
            total[b] += dist.log_prob(a)
    return total


@pytest.mark.parametrize("squash", ["tanh", "clip"])
def test_trajectory_score_oracle(squash):
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16, squash=squash)
    reference = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16, squash=squash)
    obs, actions = torch.randn(3, 6, 39), torch.rand(3, 6, 4) * 1.8 - 0.9
    expected = _reference_log_prob(policy, obs, actions) - _reference_log_prob(reference, obs, actions)
    got = trajectory_score(policy, reference, obs, actions)
    torch.testing.assert_close(got.detach().double(), expected.detach(), rtol=1e-4, atol=1e-3)
    # the reference is a constant: gradients reach the policy only
    got.sum().backward()
    assert all(p.grad is None for p in reference.parameters())
    assert all(p.grad is not None for p in policy.parameters())


def test_dpo_loss_by_hand():
    torch.manual_seed(1)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16)
    reference = frozen_copy(policy)
    w = (torch.randn(5, 4, 39), torch.rand(5, 4, 4) * 2 - 1)
    lose = (torch.randn(5, 4, 39), torch.rand(5, 4, 4) * 2 - 1)
    # policy == reference: every score is 0 and every loss log 2
    torch.testing.assert_close(
        trajectory_dpo_loss(policy, reference, w, lose, beta=0.3), torch.full((5,), math.log(2))
    )
    with torch.no_grad():
        policy.head.bias[0] += 0.5
    s_w = (_reference_log_prob(policy, *w) - _reference_log_prob(reference, *w)).float()
    s_l = (_reference_log_prob(policy, *lose) - _reference_log_prob(reference, *lose)).float()
    expected = torch.log1p(torch.exp(-0.3 * (s_w - s_l)))
    torch.testing.assert_close(
        trajectory_dpo_loss(policy, reference, w, lose, beta=0.3), expected, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="valid"):
        trajectory_dpo_loss(policy, reference, w, lose, loss="listnet")  # type: ignore[arg-type]


def test_finetune_loss_adds_the_winners_nll():
    torch.manual_seed(5)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16)
    reference = frozen_copy(policy)
    with torch.no_grad():
        policy.head.bias[:4] += 0.3
    w = (torch.randn(3, 4, 39), torch.rand(3, 4, 4) * 2 - 1)
    lose = (torch.randn(3, 4, 39), torch.rand(3, 4, 4) * 2 - 1)
    dpo = trajectory_dpo_loss(policy, reference, w, lose, beta=0.2).mean()
    nll = -_reference_log_prob(policy, *w).sum() / (3 * 4)  # per step: Σ over segments / (B · T)
    config = FinetuneConfig(beta=0.2, nll_weight=0.5)
    got = finetune_loss(policy, reference, w, lose, config)
    assert got.item() == pytest.approx(dpo.item() + 0.5 * nll.item(), rel=1e-4)
    assert finetune_loss(policy, reference, w, lose, FinetuneConfig(beta=0.2)).item() == pytest.approx(dpo.item())


def test_one_dpo_step_changes_the_policy_and_not_the_reference():
    torch.manual_seed(2)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16)
    reference = frozen_copy(policy)
    before_ref = {k: v.clone() for k, v in reference.state_dict().items()}
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    w = (torch.randn(4, 5, 39), torch.rand(4, 5, 4) * 2 - 1)
    lose = (torch.randn(4, 5, 39), torch.rand(4, 5, 4) * 2 - 1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    loss = trajectory_dpo_loss(policy, reference, w, lose, beta=0.1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before_ref.items())
    assert any(
        not torch.equal(v, policy.state_dict()[k]) for k, v in before.items() if k.startswith(("trunk", "head"))
    )
    assert float(trajectory_dpo_loss(policy, reference, w, lose, beta=0.1).mean().detach()) < float(loss.detach())


def test_group_dpo_loss_is_plackett_luce_on_the_sequence_log_ratios():
    """Oracle: ListMLE written out from its equation, −Σ_i [β s_π(i) − log Σ_{j≥i} exp(β s_π(j))], with s the
    sequence log-ratio computed by torch.distributions and π the targets' order."""
    torch.manual_seed(3)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16)
    reference = frozen_copy(policy)
    with torch.no_grad():
        policy.head.bias[:4] += torch.tensor([0.3, -0.2, 0.1, 0.4])
    obs, act = torch.randn(2, 4, 3, 39), torch.rand(2, 4, 3, 4) * 1.8 - 0.9
    targets = torch.tensor([[0.2, 0.9, -0.5, 0.4], [1.0, 0.0, 3.0, 2.0]])
    beta = 0.3
    expected = []
    for g in range(2):
        s = (_reference_log_prob(policy, obs[g], act[g]) - _reference_log_prob(reference, obs[g], act[g])).detach()
        ordered = beta * s[targets[g].argsort(descending=True)]
        expected.append(-sum(ordered[i] - torch.logsumexp(ordered[i:], 0) for i in range(4)))
    got = group_dpo_loss(policy, reference, obs, act, targets, beta=beta, loss="plackett_luce")
    torch.testing.assert_close(got.detach().double(), torch.stack(expected), rtol=1e-4, atol=1e-4)
    # policy == reference: all scores 0, so the loss is log K! for every group
    same = group_dpo_loss(reference, reference, obs, act, targets, beta=beta)
    torch.testing.assert_close(same, torch.full((2,), math.log(24.0)))
    # the objective adds α times the mean per-step NLL of each group's upper half by target
    top = ((0, 1), (0, 3), (1, 2), (1, 3))
    nll = -torch.stack([_reference_log_prob(policy, obs[g, i : i + 1], act[g, i : i + 1]) for g, i in top]).mean() / 3
    config = FinetuneConfig(beta=beta, loss="plackett_luce", nll_weight=0.5)
    total = group_finetune_loss(policy, reference, obs, act, targets, config)
    assert total.item() == pytest.approx(got.mean().item() + 0.5 * nll.item(), rel=1e-4)
    with pytest.raises(ValueError, match="listwise"):
        group_dpo_loss(policy, reference, obs, act, targets, loss="bradley_terry")
    with pytest.raises(ValueError, match="targets"):
        group_dpo_loss(policy, reference, obs, act, targets[:, :3])


def test_round_objective_pairs_or_whole_groups():
    group = [_episode([0.0, 0.1 * k]) for k in range(4)]
    scores = np.array([0.0, 3.0, 1.0, 2.0])
    objective, comparisons = round_objective([(group, scores)], FinetuneConfig())
    assert objective is not None and comparisons == 2  # (1 vs 0), (3 vs 2)
    objective, comparisons = round_objective([(group, scores)], FinetuneConfig(loss="plackett_luce"))
    assert objective is not None and comparisons == 6  # every ordered pair of 4 distinct scores
    assert round_objective([(group, np.zeros(4))], FinetuneConfig(loss="plackett_luce")) == (None, 0)
    with pytest.raises(ValueError, match="valid"):
        FinetuneConfig(loss="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="explore_temperature"):
        FinetuneConfig(explore_temperature=0.0)


def test_rank_pairs_pairs_best_with_worst():
    assert rank_pairs(np.array([0.1, 0.9, 0.5, 0.3])) == [(1, 0), (2, 3)]
    assert rank_pairs(np.array([0.1, 0.9, 0.5, 0.3]), min_gap=0.5) == [(1, 0)]
    assert rank_pairs(np.array([1.0, 1.0, 1.0])) == []  # ties give no pair


def test_fused_scorer_by_hand():
    scorer = FusedTrajectoryScorer(39, 4, hidden=8, metric_weight=2.0)
    with torch.no_grad():  # make r̂ ≡ tanh(0.5)
        last = scorer.step_reward.net[-2]
        last.weight.zero_()
        last.bias.fill_(0.5)
    x = torch.zeros(2, 3, 44)
    x[0, :, -1] = torch.tensor([0.1, 0.2, 0.3])
    expected = torch.tensor([2.0 * 0.6 + math.tanh(0.5), math.tanh(0.5)])
    torch.testing.assert_close(scorer(x), expected)


def test_fused_scores_read_the_metric_form_they_are_given():
    """With r̂ ≡ 0 and w = 1 the fused score is the task metric itself: linear, or log-distance with log_floor."""
    system = RewardModelSystem(FusedTrajectoryScorer(39, 4, hidden=8, metric_weight=1.0))
    with torch.no_grad():
        last = system.scorer.step_reward.net[-2]
        last.weight.zero_()
        last.bias.zero_()
    episodes = [_episode([0.0, 0.5, 0.25, 0.75]), _episode([0.0, 0.1, 0.8, 0.9])]
    np.testing.assert_allclose(score_trajectories(system, episodes), metric_scores(episodes), atol=1e-6)
    logged = score_trajectories(system, episodes, log_floor=0.05)
    np.testing.assert_allclose(logged, metric_scores(episodes, log_floor=0.05), atol=1e-6)
    assert not np.allclose(logged, metric_scores(episodes))
    windows = score_trajectories(system, episodes, windows=3, log_floor=0.05)  # [N, 3]: each step's own share
    np.testing.assert_allclose(windows.sum(-1), logged, atol=1e-6)


def test_fused_reward_learns_ratings_that_follow_progress_and_smoothness():
    """Ratings = progress minus jerk, quantised: the fused reward must order held-out trajectories (chance 0.5)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[list[Episode], np.ndarray]:
        episodes, quality = [], []
        for _ in range(n):
            reach = rng.uniform(0, 1)
            shaky = rng.uniform(0, 1)
            actions = shaky * rng.standard_normal((10, 4))
            episodes.append(_episode(list(np.linspace(0, reach, 11)), np.clip(actions, -1, 1)))
            quality.append(reach - 0.5 * shaky)
        return episodes, np.array(quality)

    train, q_train = make(64)
    ratings = list(1 + np.searchsorted(np.quantile(q_train, [0.2, 0.4, 0.6, 0.8]), q_train))
    system = fit_fused_reward(train, ratings, smoothness=0.0, epochs=15, seed=0)
    test, q_test = make(40)
    scores = score_trajectories(system, test)
    pairs = [(i, j) for i in range(40) for j in range(i + 1, 40) if abs(q_test[i] - q_test[j]) > 0.1]
    accuracy = np.mean([(scores[i] - scores[j]) * (q_test[i] - q_test[j]) > 0 for i, j in pairs])
    assert accuracy > 0.85
    with pytest.raises(ValueError, match="ratings"):
        fit_fused_reward(train, ratings[:-1])


class _TargetEnv(gym.Env):
    """A 5-step toy task with a known answer: the reward is −‖a − target‖² (target fixed, obs carries noise)."""

    def __init__(self, target: np.ndarray):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (39,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        self.target, self.t = target, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(39, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        reward = -float(((action - self.target) ** 2).sum())
        return np.zeros(39, np.float32), reward, False, self.t >= 5, {"success": float(reward > -0.05)}


TARGET = np.array([0.5, -0.5, 0.5, -0.5], np.float32)


def _toy_config(**overrides) -> FinetuneConfig:
    """The known-answer toy's stage 2: 25 rounds of 4 groups × 8 five-step rollouts, β 0.5, lr 3e-3, 4 epochs."""
    settings = dict(iterations=25, groups=4, group_size=8, max_steps=5, beta=0.5, lr=3e-3, epochs=4)
    return FinetuneConfig(**(settings | overrides))


def _true_returns(group) -> np.ndarray:
    """The toy ranker: each rollout's true return."""
    return np.array([e.rewards.sum() for e in group])


def _mean_action_error(policy: GaussianPolicy) -> float:
    """Σ_i |μ_i − target_i| of the mean action at the toy's (constant) observation; 2.0 for a mean of 0."""
    return float(np.abs(policy.act(np.zeros((1, 39), np.float32), deterministic=True)[0] - TARGET).sum())


def test_preference_finetuning_moves_the_policy_toward_what_the_ranker_prefers():
    """Reference: mean 0, σ ≈ 0.37; the ranker prefers actions near (0.5, −0.5, 0.5, −0.5). DPO must move the mean
    most of the way there (staying at 0 errs by Σ|TARGET| = 2.0) and leave the reference as it was."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16, squash="clip")
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.zero_()  # mean 0, log σ halfway between its bounds
    reference = frozen_copy(policy)
    envs = [_TargetEnv(TARGET) for _ in range(4)]
    log = preference_finetune(policy, reference, envs, _true_returns, _toy_config())
    assert _mean_action_error(policy) < 0.8  # measured 0.59
    assert np.abs(reference.act(np.zeros((1, 39), np.float32), deterministic=True)).max() == 0.0
    assert log.reward[-1] > log.reward[0] and len(log.pairs) == 25


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_listwise_finetuning_moves_the_policy_toward_what_the_ranker_prefers(temperature):
    """The known-answer toy above with Plackett-Luce over whole groups of 8 (and with rollouts at half σ): the mean
    action must get most of the way to TARGET (staying at 0 errs by 2.0)."""
    torch.set_num_threads(1)
    policy = _toy_policy()
    reference = frozen_copy(policy)
    config = _toy_config(loss="plackett_luce", explore_temperature=temperature)
    envs = [_TargetEnv(TARGET) for _ in range(4)]
    log = preference_finetune(policy, reference, envs, _true_returns, config)
    assert _mean_action_error(policy) < 0.8
    assert log.pairs[0] == 4 * 28 and log.reward[-1] > log.reward[0]


def test_ranked_demonstrations_alone_move_the_policy_toward_the_better_ones():
    """The ranker sees nothing in the on-policy groups (every rollout scores 0, so no pair forms); only the offline
    demonstration term acts. Demonstrations act at +TARGET (good) or −TARGET (bad) with noise; the reward ranks
    them by the toy's true return. The mean action must move most of the way to +TARGET (start: error 2.0)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    demos = []
    for k in range(16):
        actions = np.clip((1 if k % 2 else -1) * TARGET + rng.normal(0, 0.2, (5, 4)), -1, 1).astype(np.float32)
        rewards = -((actions - TARGET) ** 2).sum(-1).astype(np.float32)
        obs = np.zeros((5, 39), np.float32)
        demos.append(Episode(obs, actions, rewards, obs, np.zeros(5, np.float32), source="demo"))

    def reward(group):
        return np.array([e.rewards.sum() if e.source == "demo" else 0.0 for e in group])

    policy = _toy_policy()
    reference = frozen_copy(policy)
    config = _toy_config(iterations=20, groups=2, group_size=2, nll_weight=1.0, demo_weight=1.0)
    log = preference_finetune(policy, reference, [_TargetEnv(TARGET)] * 2, reward, config, demonstrations=demos)
    assert _mean_action_error(policy) < 0.8
    assert log.demo_comparisons == 8 and set(log.pairs) == {0}
    with pytest.raises(ValueError, match="demonstrations"):
        preference_finetune(policy, reference, [_TargetEnv(TARGET)] * 2, reward, config)
    with pytest.raises(ValueError, match="demo_weight"):
        FinetuneConfig(demo_weight=-1.0)


def test_exploration_temperature_scales_the_sampled_deviation():
    policy = _toy_policy()
    obs = np.random.default_rng(0).normal(size=(6, 39)).astype(np.float32)
    mean = policy.act(obs, deterministic=True)
    full = policy.act(obs, generator=torch.Generator().manual_seed(1))
    half = policy.act(obs, generator=torch.Generator().manual_seed(1), temperature=0.5)
    np.testing.assert_allclose(half - mean, 0.5 * (full - mean), atol=1e-6)  # σ ≈ 0.37: nothing is clipped
    np.testing.assert_array_equal(policy.act(obs, temperature=0.0), mean)
    with pytest.raises(ValueError, match="temperature"):
        policy.act(obs, temperature=-1.0)


def _toy_policy() -> GaussianPolicy:
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16, squash="clip")
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.zero_()
    return policy


def test_select_best_keeps_the_round_the_validation_envs_score_highest():
    """Training rollouts reward actions near +TARGET, the validation envs near −TARGET: every DPO round makes the
    policy worse on validation, so the kept round must be 0 and the weights exactly BC's; with the validation envs
    rewarding +TARGET too, the kept round is the argmax of the logged validation scores and the final weights score
    exactly that."""
    torch.set_num_threads(1)
    config = _toy_config(iterations=6, select_best=True)

    policy = _toy_policy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    envs = [_TargetEnv(TARGET) for _ in range(4)]
    log = preference_finetune(
        policy, frozen_copy(policy), envs, _true_returns, config, validation=[_TargetEnv(-TARGET)]
    )
    assert log.kept_round == 0 and len(log.validation) == 7
    assert max(log.validation[1:]) < log.validation[0]
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)

    policy = _toy_policy()
    validation = [_TargetEnv(TARGET)]
    log = preference_finetune(policy, frozen_copy(policy), envs, _true_returns, config, validation=validation)
    assert log.kept_round == int(np.argmax(log.validation)) and log.kept_round > 0
    assert validation_score(policy, validation, _true_returns, 5) == pytest.approx(max(log.validation), abs=1e-6)
    with pytest.raises(ValueError, match="validation"):
        preference_finetune(policy, frozen_copy(policy), envs, _true_returns, config)

    # a validation_reward of its own chooses the round instead of the ranker: one that prefers −TARGET keeps BC
    policy = _toy_policy()
    log = preference_finetune(
        policy,
        frozen_copy(policy),
        envs,
        _true_returns,
        config,
        validation=[_TargetEnv(TARGET)],
        validation_reward=lambda group: -_true_returns(group),
    )
    assert log.kept_round == 0 and max(log.validation[1:]) < log.validation[0]
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_on_round_sees_every_round_and_changes_nothing():
    """The hook is called with rounds 0..iterations, each time with that round's weights (its own validation score
    equals the logged one), and a run with the hook ends in exactly the weights of a run without it."""
    torch.set_num_threads(1)
    config = _toy_config(iterations=3)
    envs = [_TargetEnv(TARGET) for _ in range(4)]
    validation = [_TargetEnv(TARGET)]
    seen: list[tuple[int, float]] = []

    def hook(round_index: int, policy: GaussianPolicy) -> None:
        seen.append((round_index, validation_score(policy, [_TargetEnv(TARGET)], _true_returns, 5)))

    hooked = _toy_policy()
    log = preference_finetune(
        hooked, frozen_copy(hooked), envs, _true_returns, config, validation=validation, on_round=hook
    )
    assert [r for r, _ in seen] == [0, 1, 2, 3]
    assert [v for _, v in seen] == pytest.approx(log.validation, abs=1e-6)
    plain = _toy_policy()
    preference_finetune(plain, frozen_copy(plain), envs, _true_returns, config, validation=validation)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(hooked.state_dict()[key], value, rtol=0, atol=0)


def _finetune_recording_rounds(
    config: FinetuneConfig, validation: Sequence[gym.Env] = ()
) -> tuple[GaussianPolicy, FinetuneLog, list[dict[str, torch.Tensor]]]:
    """The toy's stage 2 from a fresh policy: (the policy after it, its log, a copy of the weights seen each round)."""
    states: list[dict[str, torch.Tensor]] = []
    policy = _toy_policy()
    log = preference_finetune(
        policy,
        frozen_copy(policy),
        [_TargetEnv(TARGET) for _ in range(4)],
        _true_returns,
        config,
        validation=validation,
        on_round=lambda round_index, seen: states.append(copy.deepcopy(seen.state_dict())),
    )
    return policy, log, states


def test_lr_decay_shrinks_each_rounds_step_by_its_factor():
    """Adam's first steps move each weight by about lr, so with lr_decay γ a round's change of the weights shrinks
    by about γ a round: with γ = 0.1 round 3 moves them ~1 % of round 1 (asserted < 5 %); constant: > 30 %."""
    torch.set_num_threads(1)

    def changes(decay: float) -> list[float]:
        _, _, states = _finetune_recording_rounds(_toy_config(iterations=3, lr_decay=decay))
        flat = [torch.cat([v.flatten() for v in state.values()]) for state in states]
        return [float((b - a).norm()) for a, b in zip(flat[:-1], flat[1:], strict=True)]

    constant, decayed = changes(1.0), changes(0.1)
    assert constant[2] > 0.3 * constant[0]
    assert decayed[2] < 0.05 * decayed[0]
    assert decayed[0] == pytest.approx(constant[0], rel=1e-6)  # round 1 runs at the full rate either way
    with pytest.raises(ValueError, match="lr_decay"):
        FinetuneConfig(lr_decay=0.0)


def test_round_average_keeps_the_by_hand_average_and_leaves_training_alone():
    """With round_average λ the policy returned after 3 rounds is (λ²θ₁ + λθ₂ + θ₃) / (λ² + λ + 1) of the weights a
    run without averaging passes through (computed here from that run's hook), the hook sees the running averages,
    and the weights trained are the same (the average is not trained on)."""
    torch.set_num_threads(1)
    decay = 0.6
    plain, _, rounds = _finetune_recording_rounds(_toy_config(iterations=3))
    averaged, _, seen = _finetune_recording_rounds(_toy_config(iterations=3, round_average=decay))
    weights = [decay**2, decay, 1.0]
    for key in rounds[0]:
        by_hand = sum(w * r[key] for w, r in zip(weights, rounds[1:], strict=True)) / sum(weights)
        torch.testing.assert_close(averaged.state_dict()[key], by_hand, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(seen[0][key], rounds[0][key], rtol=0, atol=0)  # round 0: BC itself
        torch.testing.assert_close(seen[1][key], rounds[1][key], rtol=0, atol=0)  # one round: its own weights
        two = (decay * rounds[1][key] + rounds[2][key]) / (decay + 1.0)
        torch.testing.assert_close(seen[2][key], two, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(averaged.state_dict()[k], plain.state_dict()[k]) for k in rounds[0])
    with pytest.raises(ValueError, match="round_average"):
        FinetuneConfig(round_average=1.0)


def test_round_average_is_what_is_validated_and_kept():
    """With validation and select_best, each logged validation score is the averaged policy's (re-scored from the
    hook's copy), and the policy returned is the average of the round kept."""
    torch.set_num_threads(1)
    config = _toy_config(iterations=4, round_average=0.5, select_best=True)
    policy, log, states = _finetune_recording_rounds(config, validation=[_TargetEnv(TARGET)])
    scores = []
    for state in states:
        seen = _toy_policy()
        seen.load_state_dict(state)
        scores.append(validation_score(seen, [_TargetEnv(TARGET)], _true_returns, 5))
    assert scores == pytest.approx(log.validation, abs=1e-6)
    assert log.kept_round == int(np.argmax(log.validation)) and log.kept_round > 0
    for key, value in states[log.kept_round].items():
        torch.testing.assert_close(policy.state_dict()[key], value, rtol=0, atol=0)


def test_windows_cut_score_and_pair_by_hand():
    np.testing.assert_array_equal(window_edges(10, 3), [0, 3, 7, 10])
    np.testing.assert_array_equal(window_edges(150, 5), [0, 30, 60, 90, 120, 150])
    with pytest.raises(ValueError, match="windows"):
        window_edges(4, 5)
    episode = _episode([0.1 * k for k in range(11)], np.arange(40, dtype=np.float32).reshape(10, 4))
    cut = window_episodes(episode, 3)
    assert [len(c) for c in cut] == [3, 4, 3]
    np.testing.assert_array_equal(np.concatenate([c.actions for c in cut]), episode.actions)
    np.testing.assert_array_equal(cut[1].next_observations, episode.next_observations[3:7])
    # the windows' shares of the fused reward add up to the whole score; each share sums its own steps
    torch.manual_seed(0)
    system = fit_fused_reward(
        [_episode(list(np.linspace(0, r, 11))) for r in np.linspace(0, 1, 8)], list(range(8)), epochs=1
    )
    group = [_episode(list(np.linspace(0, r, 11)), np.full((10, 4), r, np.float32)) for r in (0.2, 0.9)]
    whole = score_trajectories(system, group)
    shares = score_trajectories(system, group, windows=3)
    assert shares.shape == (2, 3)
    np.testing.assert_allclose(shares.sum(-1), whole, rtol=1e-5, atol=1e-6)
    steps = system.scorer.step_scores(torch.from_numpy(trajectory_features(group))).detach().numpy()
    np.testing.assert_allclose(shares[:, 1], steps[:, 3:7].sum(-1), rtol=1e-5, atol=1e-6)
    # each window is ranked on its own: rollout 0 wins window 0, rollout 1 wins window 1
    scores = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5], [0.2, 0.1]])
    groups = by_window([([episode, episode, episode, episode], scores)])
    assert len(groups) == 2 and all(len(g[0][0]) == 5 for g in groups)
    np.testing.assert_array_equal(groups[1][1], [0.0, 2.0, 0.5, 0.1])
    objective, comparisons = round_objective([([episode] * 4, scores)], FinetuneConfig(windows=2))
    assert objective is not None and comparisons == 4  # 2 pairs per window
    with pytest.raises(ValueError, match="windows"):
        FinetuneConfig(windows=0)


class _PhaseEnv(_TargetEnv):
    """The toy with two phases: steps 0-4 reward actions near +TARGET, steps 5-9 near −TARGET; obs[0] = phase."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        target = self.target if self.t < 5 else -self.target
        self.t += 1
        obs = np.zeros(39, np.float32)
        obs[0] = float(self.t >= 5)
        return obs, -float(((action - target) ** 2).sum()), False, self.t >= 10, {}


def _phase_error(policy: GaussianPolicy) -> tuple[float, float]:
    obs = np.zeros((2, 39), np.float32)
    obs[1, 0] = 1.0
    mean = policy.act(obs, deterministic=True)
    return float(np.abs(mean[0] - TARGET).sum()), float(np.abs(mean[1] + TARGET).sum())


def test_window_ranking_learns_what_each_phase_wants():
    """Known answer: the first half of every rollout should act at +TARGET, the second at −TARGET; the ranker scores
    each half by its own true return (windows=2). The mean action must get most of the way in both phases (staying
    at 0 errs by 2.0 in each; measured 0.22 and 0.19), and ranking whole rollouts by their total return with the
    same budget must do worse (measured 1.29 and 1.31: one preference per rollout mixes the phases' credit)."""
    torch.set_num_threads(1)
    config = _toy_config(iterations=40, max_steps=10, windows=2)

    def halves(group):
        return np.array([[e.rewards[:5].sum(), e.rewards[5:].sum()] for e in group])

    policy = _toy_policy()
    log = preference_finetune(policy, frozen_copy(policy), [_PhaseEnv(TARGET) for _ in range(4)], halves, config)
    first, second = _phase_error(policy)
    assert first < 0.6 and second < 0.6
    whole = _toy_policy()
    preference_finetune(
        whole,
        frozen_copy(whole),
        [_PhaseEnv(TARGET) for _ in range(4)],
        _true_returns,
        _toy_config(iterations=40, max_steps=10),
    )
    assert sum(_phase_error(whole)) > first + second + 1.0
    assert log.pairs[0] == 4 * 2 * 4  # 4 groups × 2 windows × 4 pairs
    with pytest.raises(ValueError, match="shape"):  # a whole-trajectory reward with windows=2
        preference_finetune(policy, frozen_copy(policy), [_PhaseEnv(TARGET)] * 4, _true_returns, config)


def test_residual_policy_finetunes_while_its_base_stays_put():
    """The known-answer toy with a residual policy on the frozen toy policy: the mean action must get most of the way
    to TARGET, through the residual alone (the base's weights are bit-for-bit unchanged)."""
    torch.set_num_threads(1)
    base = _toy_policy()
    policy = ResidualPolicy.on(base, residual_hidden=16)
    frozen = {k: v.clone() for k, v in policy.state_dict().items() if not k.startswith("residual.")}
    preference_finetune(
        policy, frozen_copy(base), [_TargetEnv(TARGET) for _ in range(4)], _true_returns, _toy_config()
    )
    assert _mean_action_error(policy) < 0.8
    assert _mean_action_error(base) == pytest.approx(2.0)
    for key, value in frozen.items():
        torch.testing.assert_close(policy.state_dict()[key], value, rtol=0, atol=0)


def test_true_return_scores_by_hand():
    rewards = np.arange(6, dtype=np.float32)
    obs = np.zeros((6, 39), np.float32)
    episodes = [Episode(obs, np.zeros((6, 4), np.float32), k * rewards, obs, np.zeros(6, np.float32)) for k in (1, 2)]
    np.testing.assert_allclose(true_return_scores(episodes), [15.0, 30.0])
    # windows [0, 2), [2, 4), [4, 6): 0+1, 2+3, 4+5
    np.testing.assert_allclose(true_return_scores(episodes, windows=3), [[1, 5, 9], [2, 10, 18]])


def test_refit_ranks_each_round_by_the_newest_reward_and_rescores_validation_with_the_last():
    """A refit that returns constant rewards 1, 2, 3 (the initial one scores 0): round k's mean reward must be k, the
    refit must get every rollout of its round, and all validation scores (BC's included) must come from the last
    reward, so they are equal and the first round (BC) is kept."""
    torch.set_num_threads(1)
    calls: list[int] = []

    def refit(rollouts):
        calls.append(len(rollouts))
        value = float(len(calls))
        return lambda episodes: np.full(len(episodes), value)

    policy = _toy_policy()
    config = _toy_config(iterations=3, select_best=True)
    log = preference_finetune(
        policy,
        frozen_copy(policy),
        [_TargetEnv(TARGET) for _ in range(4)],
        lambda episodes: np.zeros(len(episodes)),
        config,
        validation=[_TargetEnv(TARGET)],
        refit=refit,
    )
    assert log.reward == [0.0, 1.0, 2.0] and calls == [32, 32, 32]
    assert log.validation == [3.0] * 4 and log.kept_round == 0 and log.refits == 3
    with pytest.raises(ValueError, match="noise_correlation"):
        FinetuneConfig(noise_correlation=1.0)


def test_replay_rounds_add_the_previous_rounds_groups_and_a_refit_ranks_them_again():
    """Every toy rollout has its own return, so a pairwise round of 4 groups × 8 makes 4 × 4 = 16 pairs. Replaying 2
    rounds, rounds 1-4 must train on 16, 32, 48, 48 pairs. With a refit to a reward that ties everything, the
    replayed groups are ranked again by it: no pair survives after the first round (16, 0, 0; without ranking them
    again the first round's replayed groups would still give 16, 16, 16)."""
    torch.set_num_threads(1)
    envs = [_TargetEnv(TARGET) for _ in range(4)]
    policy = _toy_policy()
    log = preference_finetune(
        policy, frozen_copy(policy), envs, _true_returns, _toy_config(iterations=4, replay_rounds=2)
    )
    assert log.pairs == [16, 32, 48, 48]
    plain = _toy_policy()
    log = preference_finetune(plain, frozen_copy(plain), envs, _true_returns, _toy_config(iterations=4))
    assert log.pairs == [16] * 4

    def refit(rollouts):
        return lambda episodes: np.zeros(len(episodes))

    refitted = _toy_policy()
    config = _toy_config(iterations=3, replay_rounds=2)
    log = preference_finetune(refitted, frozen_copy(refitted), envs, _true_returns, config, refit=refit)
    assert log.pairs == [16, 0, 0]
    with pytest.raises(ValueError, match="replay_rounds"):
        FinetuneConfig(replay_rounds=-1)


def test_finetuning_with_replayed_rounds_still_moves_the_policy_toward_what_the_ranker_prefers():
    """The known-answer toy with each round also training on the 3 rounds before it: four times the pairs per update,
    so the mean action must get nearer TARGET than without replay (error 0.59 there; staying at 0 errs by 2.0;
    measured 0.08)."""
    torch.set_num_threads(1)
    policy = _toy_policy()
    reference = frozen_copy(policy)
    envs = [_TargetEnv(TARGET) for _ in range(4)]
    preference_finetune(policy, reference, envs, _true_returns, _toy_config(replay_rounds=3))
    assert _mean_action_error(policy) < 0.3


def test_reward_refit_on_ratings_repairs_a_wrong_initial_reward():
    """Known answer: the initial reward ranks the toy's rollouts backwards (it prefers actions away from TARGET).
    Ranked by it alone, finetuning moves the mean action away (error > 2.0, the start). With a RewardRefit that rates
    8 rollouts a round on their true return (a RatingTeacher with 10 levels on a fixed return scale, starting from 32
    rated rollouts of the start policy) and refits the fused reward on every rating so far, rounds 2.. are ranked by
    a reward learned from ratings, and the mean action must come back past its start toward TARGET (error < 1.6;
    measured 1.29, and 0.90 with the true return as the refit, same budget after the same backwards first round)."""
    torch.set_num_threads(1)
    config = _toy_config(iterations=20)

    def backwards(group):
        return -_true_returns(group)

    wrong = _toy_policy()
    preference_finetune(wrong, frozen_copy(wrong), [_TargetEnv(TARGET) for _ in range(4)], backwards, config)
    assert _mean_action_error(wrong) > 2.0

    policy = _toy_policy()
    env = _TargetEnv(TARGET)
    act = policy.numpy_policy(deterministic=False, seed=0)
    rated = [rollout(env, act, max_steps=5) for _ in range(32)]
    teacher = RatingTeacher(edges=list(np.linspace(-8.0, -0.5, 9)))  # 10 levels on an absolute return scale
    refit = RewardRefit(teacher, rated, [teacher.rate(e.rewards) for e in rated], per_round=8, epochs=10)
    preference_finetune(
        policy, frozen_copy(policy), [_TargetEnv(TARGET) for _ in range(4)], backwards, config, refit=refit
    )
    assert _mean_action_error(policy) < 1.6
    assert refit.fits == 20 and len(refit.episodes) == len(refit.ratings) == 32 + 20 * 8
    with pytest.raises(ValueError, match="per_round"):
        RewardRefit(teacher, [], [], per_round=0)
    with pytest.raises(ValueError, match="ratings"):
        RewardRefit(teacher, rated, [], per_round=1)


def test_credit_to_go_by_hand():
    np.testing.assert_array_equal(credit_to_go(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])), [[6, 5, 3], [1, 1, 1]])
    np.testing.assert_array_equal(credit_to_go(np.array([1.0, 2.0])), [1.0, 2.0])  # whole trajectories unchanged
    with pytest.raises(ValueError, match="window_credit"):
        FinetuneConfig(window_credit="future")


class _DelayedEnv(_TargetEnv):
    """Two phases of 5 steps; the first phase earns nothing itself, and every second-phase step earns −‖ā − TARGET‖²
    (ā: the first phase's mean action) whatever it does: what the first phase does pays off only later."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.first: list[np.ndarray] = []
        return super().reset(seed=seed, options=options)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.t < 5:
            self.first.append(np.asarray(action))
            reward = 0.0
        else:
            reward = -float(((np.mean(self.first, 0) - self.target) ** 2).sum())
        self.t += 1
        obs = np.zeros(39, np.float32)
        obs[0] = float(self.t >= 5)
        return obs, reward, False, self.t >= 10, {}


def test_credit_to_go_teaches_the_phase_whose_payoff_comes_later():
    """Known answer on _DelayedEnv, windows = 2 ranked by their true returns: with each window's own share the first
    window's returns are all 0, so it forms no pair and its mean action does not approach TARGET (error stays above
    1.8; start 2.0; measured 2.00); credited with the return to go, the first window is ranked by its payoff and its
    mean action moves toward it (error < 1.5; measured 1.12: ā averages five steps' noise, a weak signal)."""
    torch.set_num_threads(1)

    def halves(group):
        return np.array([[e.rewards[:5].sum(), e.rewards[5:].sum()] for e in group])

    errors, logs = {}, {}
    for credit in ("own", "to_go"):
        policy = _toy_policy()
        config = _toy_config(iterations=30, max_steps=10, windows=2, window_credit=credit)
        envs = [_DelayedEnv(TARGET) for _ in range(4)]
        logs[credit] = preference_finetune(policy, frozen_copy(policy), envs, halves, config)
        errors[credit] = _phase_error(policy)[0]
    assert errors["own"] > 1.8 and errors["to_go"] < 1.5
    # the logged reward is the rollouts' total (≤ 0 here), not the sum of the credited windows (which counts the
    # second window twice)
    assert logs["to_go"].reward[0] == pytest.approx(logs["own"].reward[0])
