from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmpref.control.bc import behaviour_cloning
from mmpref.control.cpl.algorithm import CPLSystem, oriented_pairs, train_cpl
from mmpref.control.policies import GaussianPolicy
from mmpref.data import Segment, SegmentPair


def _pair(k: int, good: np.ndarray, bad: np.ndarray, obs: np.ndarray, label: float) -> SegmentPair:
    a = Segment(id=f"a{k}", observations=obs, actions=good)
    b = Segment(id=f"b{k}", observations=obs, actions=bad)
    return SegmentPair(id=f"p{k}", a=a, b=b, label=label)


def _naive_log_prob(policy: GaussianPolicy, obs: np.ndarray, actions: np.ndarray) -> float:
    # independent of GaussianPolicy.log_prob: torch.distributions with a tanh transform, one step at a time
    total = 0.0
    for o, a in zip(obs, actions, strict=True):
        with torch.no_grad():
            mean, log_std = policy(torch.as_tensor(o, dtype=torch.float32))
        base = torch.distributions.Normal(mean.double(), log_std.exp().double())
        dist = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
        total += float(dist.log_prob(torch.as_tensor(a, dtype=torch.float64)).sum())
    return total


def test_cpl_loss_matches_the_paper_formula_by_hand():
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=16)
    rng = np.random.default_rng(0)
    pairs = [
        _pair(k, rng.uniform(-0.9, 0.9, (4, 2)), rng.uniform(-0.9, 0.9, (4, 2)), rng.normal(size=(4, 3)), label)
        for k, label in enumerate([1.0, 0.0, 1.0])
    ]
    system = CPLSystem(policy, alpha=0.1, conservative_bias=0.5)
    batch = oriented_pairs(pairs).tensors
    system.log = lambda *args, **kwargs: None  # outside a Trainer
    loss = system.training_step(batch, 0).item()
    expected = []
    for p in pairs:
        win, lose = (p.a, p.b) if p.label == 1.0 else (p.b, p.a)
        s_w = 0.1 * _naive_log_prob(policy, win.observations, win.actions)
        s_l = 0.1 * _naive_log_prob(policy, lose.observations, lose.actions)
        expected.append(-math.log(math.exp(s_w) / (math.exp(s_w) + math.exp(0.5 * s_l))))  # Hejna et al., CPL(λ)
    assert loss == pytest.approx(np.mean(expected), rel=1e-4)


def test_oriented_pairs_put_the_winner_first_and_drop_ties():
    obs = np.zeros((2, 3))
    good, bad = np.full((2, 1), 0.5), np.full((2, 1), -0.5)
    data = oriented_pairs(
        [_pair(0, good, bad, obs, 1.0), _pair(1, good, bad, obs, 0.0), _pair(2, good, bad, obs, 0.5)]
    )
    obs_w, act_w, obs_l, act_l = data.tensors
    assert len(act_w) == 2
    assert act_w[0, 0, 0] == 0.5 and act_w[1, 0, 0] == -0.5 and act_l[1, 0, 0] == 0.5
    with pytest.raises(ValueError, match="all labels are 0.5"):
        oriented_pairs([_pair(0, good, bad, obs, 0.5)])
    with pytest.raises(ValueError, match="conservative_bias"):
        CPLSystem(GaussianPolicy(3, 1), conservative_bias=0.0)


def test_cpl_learns_the_preferred_action_after_bc_warm_up():
    # toy problem with a known answer: in every state the preferred segments act +0.6, the rejected ones −0.6.
    # BC on all segments learns a mean action near 0; CPL must move it to the preferred side.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(128):
        obs = rng.normal(size=(5, 2))
        good = np.clip(0.6 + 0.1 * rng.normal(size=(5, 1)), -1, 1)
        bad = np.clip(-0.6 + 0.1 * rng.normal(size=(5, 1)), -1, 1)
        pairs.append(_pair(k, good, bad, obs, 1.0) if k % 2 else _pair(k, bad, good, obs, 0.0))
    policy = GaussianPolicy(obs_dim=2, act_dim=1, hidden=32)
    all_obs = np.concatenate([s.observations for p in pairs for s in (p.a, p.b)])
    all_act = np.concatenate([s.actions for p in pairs for s in (p.a, p.b)])
    behaviour_cloning(policy, all_obs, all_act, epochs=5, batch_size=128)
    test_obs = rng.normal(size=(200, 2)).astype(np.float32)
    before = float(np.mean(policy.act(test_obs, deterministic=True)))
    before_params = [p.detach().clone() for p in policy.parameters()]
    metrics = train_cpl(policy, pairs, steps=150, batch_size=32, lr=1e-3)
    after = float(np.mean(policy.act(test_obs, deterministic=True)))
    assert abs(before) < 0.3
    assert after > 0.4  # the preferred action is +0.6
    assert metrics["train/accuracy"] >= 0.9 and math.isfinite(metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before_params, policy.parameters(), strict=True))
