"""PEARL robust reward learning: one system step, learning a known reward from soft labels, filtered BC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpref.control.pearl.reward import (
    GaussianRewardSystem,
    GaussianStepReward,
    clone_trajectories,
    fit_gaussian_reward,
    predicted_returns,
    reward_filtered_bc,
    sample_pairs,
)
from mmpref.control.pearl.transfer import label_matrix, transfer_accuracy


def test_one_step_gives_a_finite_loss_and_changes_parameters():
    torch.manual_seed(0)
    system = GaussianRewardSystem(GaussianStepReward(5, hidden=8), kl_weight=0.1, samples=3)
    batch = {"x_a": torch.randn(4, 6, 5), "x_b": torch.randn(4, 6, 5), "label": torch.tensor([1.0, 0.0, 0.5, 0.8])}
    before = [p.detach().clone() for p in system.parameters()]
    optimiser = system.configure_optimizers()
    loss = system.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    optimiser.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, system.parameters(), strict=True))
    mean, var = system(batch["x_a"])
    assert mean.shape == var.shape == (4,) and (var > 0).all()


def test_learns_a_known_step_reward_from_soft_labels():
    rng = np.random.default_rng(0)
    segments = rng.normal(size=(160, 8, 3)).astype(np.float32)
    returns = segments[..., 0].sum(1) - 0.5 * segments[..., 1].sum(1)  # true step reward x0 − x1/2
    train, test = slice(0, 120), slice(120, 160)
    labels = label_matrix(returns[train])
    system = fit_gaussian_reward(segments[train], labels, n_pairs=2000, epochs=6, hidden=32, samples=2, seed=0)
    accuracy = transfer_accuracy(label_matrix(predicted_returns(system, segments[test])), returns[test])
    assert accuracy > 0.9  # chance is 0.5


def test_sample_pairs_never_pairs_a_segment_with_itself():
    first, second = sample_pairs(np.zeros((5, 5)), 1000, np.random.default_rng(0))
    assert (first != second).all() and set(first) == set(range(5))
    with pytest.raises(ValueError, match="at least two"):
        sample_pairs(np.zeros((1, 1)), 3, np.random.default_rng(0))


def _trajectories_and_reward(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, GaussianRewardSystem]:
    """n random 4-step trajectories (observations, actions) and an untrained Gaussian reward over them."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 4, 39)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, 4, 4)).astype(np.float32)
    torch.manual_seed(0)
    return obs, act, GaussianRewardSystem(GaussianStepReward(43, hidden=8))


def test_filtered_bc_keeps_the_trajectories_the_reward_ranks_highest():
    obs, act, system = _trajectories_and_reward(10, seed=1)
    policy, chosen = reward_filtered_bc(system, obs, act, top_fraction=0.3, epochs=1)
    scores = predicted_returns(system, np.concatenate([obs, act], -1))
    assert sorted(chosen.tolist()) == sorted(np.argsort(-scores)[:3].tolist())
    assert policy.act(obs[0, 0]).shape == (4,)
    with pytest.raises(ValueError, match="top_fraction"):
        reward_filtered_bc(system, obs, act, top_fraction=0.0)


def test_clone_trajectories_matches_the_cloning_step_of_filtered_bc():
    obs, act, system = _trajectories_and_reward(6, seed=2)
    filtered, chosen = reward_filtered_bc(system, obs, act, top_fraction=0.5, epochs=2, seed=3)
    cloned = clone_trajectories(obs, act, chosen, epochs=2, seed=3)
    for a, b in zip(filtered.state_dict().values(), cloned.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same subset, epochs and seed: the same policy
    with pytest.raises(ValueError, match="non-empty"):
        clone_trajectories(obs, act, np.array([], int))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"segments \[n, H, D\] and labels \[n, n\]"):
        fit_gaussian_reward(np.zeros((4, 3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="kl_weight"):
        GaussianRewardSystem(GaussianStepReward(2), kl_weight=-1.0)
