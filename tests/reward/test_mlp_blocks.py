"""The shared MLP trunk keeps the parameter names of the hand-written layouts, so saved weights still load."""

from __future__ import annotations

import torch
from torch import nn

from mmpref.control.pearl.reward import GaussianStepReward
from mmpref.control.policies import GaussianPolicy
from mmpref.control.reward import StepReward
from mmpref.reward.networks import MLPScorer, mlp_blocks


def test_blocks_are_linear_activation_pairs():
    blocks = mlp_blocks(5, [8, 3], nn.LeakyReLU, dropout=0.1)
    kinds = [type(b) for b in blocks]
    assert kinds == [nn.Linear, nn.LeakyReLU, nn.Dropout, nn.Linear, nn.LeakyReLU, nn.Dropout]
    assert (blocks[0].in_features, blocks[0].out_features, blocks[3].in_features) == (5, 8, 8)
    assert mlp_blocks(5, []) == []


def test_parameter_names_match_the_earlier_layouts():
    assert list(StepReward(7, hidden=16, layers=2).state_dict()) == [
        f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    ]
    policy_keys = list(GaussianPolicy(obs_dim=6, act_dim=2, hidden=16).state_dict())
    assert [k for k in policy_keys if k.startswith("trunk")] == [
        f"trunk.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    ]
    assert {"head.weight", "head.bias", "obs_mean", "obs_std"} <= set(policy_keys)
    gaussian = list(GaussianStepReward(7, hidden=16, layers=2).state_dict())
    assert gaussian == [f"trunk.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")] + ["head.weight", "head.bias"]
    assert list(MLPScorer(7, hidden=(16, 8)).state_dict()) == [
        f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    ]
    assert MLPScorer(7, hidden=()).net(torch.zeros(1, 7)).shape == (1, 1)
