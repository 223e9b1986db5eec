from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mmpref.control.bc import behaviour_cloning
from mmpref.control.policies import GaussianPolicy, ResidualPolicy, censored_copy, load_policy, save_policy
from mmpref.data import DataError


def _naive_log_prob(policy: GaussianPolicy, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log π(a|s) by hand: a loop over steps and dimensions with math.* (the paper's formula, not the module's)."""
    with torch.no_grad():
        mean, log_std = policy(obs)
    out = torch.zeros(obs.shape[:-1], dtype=torch.float64)
    flat_mean, flat_log_std = mean.reshape(-1, policy.act_dim), log_std.reshape(-1, policy.act_dim)
    flat_actions = actions.reshape(-1, policy.act_dim)
    values = []
    for n in range(len(flat_actions)):
        total = 0.0
        for i in range(policy.act_dim):
            a = float(flat_actions[n, i])
            if policy.squash == "tanh":
                a = min(max(a, -1 + policy.action_eps), 1 - policy.action_eps)
                u = 0.5 * math.log((1 + a) / (1 - a))
                jac = math.log(1 - a * a)
            else:
                u, jac = a, 0.0
            mu, sigma = float(flat_mean[n, i]), math.exp(float(flat_log_std[n, i]))
            log_density = -0.5 * ((u - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
            total += log_density - jac
        values.append(total)
    return out.new_tensor(values).reshape(obs.shape[:-1])


@pytest.mark.parametrize("squash", ["tanh", "clip"])
def test_log_prob_matches_the_density_by_hand(squash):
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=5, act_dim=3, hidden=16, squash=squash)
    obs = torch.randn(4, 5)
    actions = torch.tensor([[0.1, -0.5, 0.9], [1.0, -1.0, 0.0], [0.3, 0.3, -0.99], [-0.2, 0.7, 0.4]])
    expected = _naive_log_prob(policy, obs, actions)
    torch.testing.assert_close(policy.log_prob(obs, actions).double(), expected, rtol=1e-5, atol=1e-5)


def test_tanh_density_integrates_to_one_in_one_dimension():
    policy = GaussianPolicy(obs_dim=1, act_dim=1, hidden=4, squash="tanh", action_eps=1e-6)
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 200001).unsqueeze(-1)
    obs = torch.zeros_like(grid)
    density = policy.log_prob(obs, grid).double().exp()
    assert torch.trapezoid(density, grid.squeeze(-1).double()).item() == pytest.approx(1.0, abs=2e-3)


def test_segment_log_prob_is_the_masked_sum_of_steps():
    torch.manual_seed(1)
    policy = GaussianPolicy(obs_dim=6, act_dim=2, hidden=8)
    obs, actions = torch.randn(3, 5, 6), torch.rand(3, 5, 2) * 2 - 1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    got = policy.segment_log_prob(obs, actions, mask).detach()
    for b in range(3):
        expected = sum(float(policy.log_prob(obs[b, t], actions[b, t]).detach()) for t in range(5) if mask[b, t])
        assert got[b].item() == pytest.approx(expected, abs=1e-4)
    assert got[2].item() == 0.0
    torch.testing.assert_close(policy.segment_log_prob(obs, actions), policy.log_prob(obs, actions).sum(-1))


def test_shape_errors_name_the_shapes():
    policy = GaussianPolicy(obs_dim=6, act_dim=2, hidden=8)
    with pytest.raises(ValueError, match="obs must end in size 6"):
        policy.log_prob(torch.zeros(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="leading shape"):
        policy.log_prob(torch.zeros(3, 6), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\[B, T, o\]"):
        policy.segment_log_prob(torch.zeros(3, 6), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="squash"):
        GaussianPolicy(squash="sigmoid")  # type: ignore[arg-type]


@pytest.mark.parametrize("squash", ["tanh", "clip"])
def test_act_is_bounded_seeded_and_deterministic_mode_is_the_mean(squash):
    torch.manual_seed(2)
    policy = GaussianPolicy(obs_dim=39, act_dim=4, hidden=16, squash=squash)
    with torch.no_grad():  # a wide policy so that samples hit the bounds
        policy.head.bias[4:] = 5.0
    obs = np.random.default_rng(0).standard_normal((64, 39)).astype(np.float32)
    a1 = policy.act(obs, generator=torch.Generator().manual_seed(0))
    a2 = policy.act(obs, generator=torch.Generator().manual_seed(0))
    assert isinstance(a1, np.ndarray) and a1.shape == (64, 4)
    np.testing.assert_array_equal(a1, a2)
    assert np.abs(a1).max() <= 1.0
    mean, _ = policy(torch.from_numpy(obs))
    squashed = torch.tanh(mean) if squash == "tanh" else mean.clamp(-1, 1)
    np.testing.assert_allclose(policy.act(obs, deterministic=True), squashed.detach().numpy(), rtol=1e-6)
    step = policy.numpy_policy(seed=3)(obs[0])
    assert step.shape == (4,) and step.dtype == np.float64


def test_log_prob_gradients_reach_every_parameter():
    torch.manual_seed(3)
    policy = GaussianPolicy(obs_dim=6, act_dim=2, hidden=8)
    policy.log_prob(torch.randn(10, 6), torch.rand(10, 2) * 2 - 1).sum().backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_behaviour_cloning_learns_a_linear_expert():
    """BC on a known expert a = tanh(W s): the clone's mean action must reach it (chance: error ~ 0.5)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)) * 0.5
    obs = rng.standard_normal((2000, 8)).astype(np.float32)
    actions = np.tanh(obs @ w.T + 0.05 * rng.standard_normal((2000, 4))).astype(np.float32)
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=8, act_dim=4, hidden=64)
    result = behaviour_cloning(policy, obs, actions, epochs=15, batch_size=128, lr=3e-3)
    assert result.log_likelihood_after > result.log_likelihood_before + 5.0
    test_obs = rng.standard_normal((500, 8)).astype(np.float32)
    error = np.abs(policy.act(test_obs, deterministic=True) - np.tanh(test_obs @ w.T)).mean()
    before = np.abs(np.tanh(test_obs @ w.T)).mean()  # the error of always acting 0
    assert error < 0.1 < before


def test_behaviour_cloning_rejects_bad_demonstrations():
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=4)
    with pytest.raises(ValueError, match="equal N"):
        behaviour_cloning(policy, np.zeros((5, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        behaviour_cloning(policy, np.zeros((5, 3)), np.full((5, 2), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        behaviour_cloning(policy, np.full((5, 3), np.nan), np.zeros((5, 2)))


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(4)
    policy = GaussianPolicy(obs_dim=7, act_dim=3, hidden=12, layers=3, squash="clip")
    policy.set_normalizer(np.random.default_rng(0).standard_normal((50, 7)) * 3 + 1)
    path = save_policy(policy, tmp_path / "sub" / "policy.safetensors")
    back = load_policy(path)
    assert back.config == policy.config
    obs, actions = torch.randn(5, 7), torch.rand(5, 3) * 2 - 1
    torch.testing.assert_close(back.log_prob(obs, actions), policy.log_prob(obs, actions), rtol=0, atol=0)
    assert not list(tmp_path.glob("sub/.*tmp"))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_policy(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="bad.safetensors"):
        load_policy(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(DataError, match="config"):
        load_policy(other)


def _trained_base() -> GaussianPolicy:
    torch.manual_seed(6)
    base = GaussianPolicy(obs_dim=7, act_dim=3, hidden=12, squash="tanh")
    base.set_normalizer(np.random.default_rng(1).standard_normal((40, 7)) * 2 + 3)
    with torch.no_grad():
        base.head.bias.uniform_(-0.5, 0.5)
    return base


def test_residual_policy_starts_as_its_base_and_trains_only_the_residual():
    base = _trained_base()
    policy = ResidualPolicy.on(base, residual_hidden=8)
    obs, actions = torch.randn(6, 7), torch.rand(6, 3) * 1.8 - 0.9
    for got, want in zip(policy(obs), base(obs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(policy.log_prob(obs, actions), _naive_log_prob(base, obs, actions).float())
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("residual.") for n in trainable)
    frozen = {k: v.clone() for k, v in policy.state_dict().items() if not k.startswith("residual.")}
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(20):  # raise the likelihood of fixed actions: only the residual can move
        loss = -policy.log_prob(obs, actions).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert -policy.log_prob(obs, actions).mean() < -base.log_prob(obs, actions).mean() - 0.1
    for key, value in frozen.items():
        torch.testing.assert_close(policy.state_dict()[key], value, rtol=0, atol=0)
    # the policy is f_base + g_φ on the base's standardised observation, by hand
    x = (obs - base.obs_mean) / base.obs_std
    mean = (base.head(base.trunk(x)) + policy.residual(x))[..., :3]
    torch.testing.assert_close(policy(obs)[0], mean)


def test_residual_policy_saves_loads_and_refuses_nesting(tmp_path):
    policy = ResidualPolicy.on(_trained_base(), residual_hidden=8, residual_layers=1)
    with torch.no_grad():
        policy.residual[-1].bias.fill_(0.2)
    back = load_policy(save_policy(policy, tmp_path / "residual.safetensors"))
    assert isinstance(back, ResidualPolicy) and back.config == policy.config
    obs, actions = torch.randn(5, 7), torch.rand(5, 3) * 2 - 1
    torch.testing.assert_close(back.log_prob(obs, actions), policy.log_prob(obs, actions), rtol=0, atol=0)
    assert not any(p.requires_grad for n, p in back.named_parameters() if not n.startswith("residual."))
    with pytest.raises(ValueError, match="already"):
        ResidualPolicy.on(policy)
    with pytest.raises(TypeError, match="normaliser"):  # the base's normaliser is frozen with it
        policy.set_normalizer(np.zeros((4, 7)))
    with pytest.raises(ValueError, match="residual_hidden"):
        ResidualPolicy(residual_hidden=0)


def test_correlated_exploration_noise_is_ar1_with_standard_normal_steps():
    """ρ = 0 draws exactly the independent samples of before; ρ = 0.9 gives noise whose steps are standard normal
    (std ≈ 1 of (a − μ)/(τσ)) with lag-1 autocorrelation ≈ ρ and lag-5 ≈ ρ⁵ (independent: ≈ 0)."""
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=2, hidden=8, squash="clip")
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.zero_()  # mean 0 everywhere, σ ≈ 0.37: at temperature 0.5 nothing is clipped
    obs = np.zeros(3, np.float32)
    sigma = float(policy(torch.zeros(3))[1].exp()[0])

    def noise(correlation: float, seed: int = 1) -> np.ndarray:
        act = policy.numpy_policy(seed=seed, temperature=0.5, correlation=correlation)
        return np.stack([act(obs) for _ in range(4000)]) / (0.5 * sigma)

    independent = policy.numpy_policy(seed=1, temperature=0.5)
    generator = torch.Generator().manual_seed(1)
    np.testing.assert_array_equal(
        np.stack([independent(obs) for _ in range(5)]),
        np.stack([policy.act(obs, generator=generator, temperature=0.5) for _ in range(5)]).astype(np.float64),
    )
    for rho in (0.0, 0.9):
        eps = noise(rho)
        assert eps.std() == pytest.approx(1.0, abs=0.1)
        for lag in (1, 5):
            auto = np.mean([np.corrcoef(eps[:-lag, k], eps[lag:, k])[0, 1] for k in range(2)])
            assert auto == pytest.approx(rho**lag, abs=0.07)
    with pytest.raises(ValueError, match="correlation"):
        policy.numpy_policy(correlation=1.0)


def test_censored_clip_likelihood_scores_bound_actions_by_the_mass_beyond():
    """Oracle with torch.distributions: an action on +1 scores log P(u ≥ 1) = log(1 − F(1)), on −1 log F(−1), inside
    the density; the uncensored policy keeps the density everywhere. The mass matches the share of clipped samples."""
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=3, act_dim=3, hidden=8, squash="clip")
    with torch.no_grad():  # means near the bounds and σ ≈ 0.5, so the masses beyond ±1 are not vanishingly small
        policy.head.weight.mul_(0.1)
        policy.head.bias.copy_(torch.tensor([0.8, -0.7, 0.0, 0.5, 0.5, 0.5]))
    censored = censored_copy(policy)
    obs = torch.randn(5, 3)
    actions = torch.tensor([[1.0, -1.0, 0.3]]).repeat(5, 1)
    mean, log_std = policy(obs)
    normal = torch.distributions.Normal(mean.double(), log_std.exp().double())
    a = actions.double()
    expected = (
        torch.log1p(-normal.cdf(torch.ones_like(a)))[:, 0]
        + torch.log(normal.cdf(-torch.ones_like(a)))[:, 1]
        + normal.log_prob(a)[:, 2]
    )
    torch.testing.assert_close(censored.log_prob(obs, actions).double(), expected, rtol=1e-5, atol=1e-5)
    density = normal.log_prob(a).sum(-1)
    torch.testing.assert_close(policy.log_prob(obs, actions).double(), density, rtol=1e-5, atol=1e-5)
    # acting is unchanged, and the share of samples clipped to +1 in dimension 0 is the mass the likelihood uses
    generator = torch.Generator().manual_seed(2)
    x = obs[:1].expand(20000, 3)
    samples = censored.act(x, generator=generator)
    np.testing.assert_array_equal(censored.act(obs, deterministic=True), policy.act(obs, deterministic=True))
    share = (samples[:, 0] == 1.0).double().mean()
    assert share.item() == pytest.approx(float(1 - normal.cdf(torch.ones_like(a))[0, 0]), abs=0.01)
    with pytest.raises(ValueError, match="censored"):
        GaussianPolicy(squash="tanh", censored=True)


def test_censored_copy_keeps_weights_and_class_and_round_trips(tmp_path):
    torch.manual_seed(0)
    base = GaussianPolicy(obs_dim=3, act_dim=2, hidden=8, squash="clip")
    residual = censored_copy(ResidualPolicy.on(base, residual_hidden=4))
    assert isinstance(residual, ResidualPolicy) and residual.censored
    assert [p.requires_grad for p in residual.parameters()] == [
        p.requires_grad for p in ResidualPolicy.on(base, 4).parameters()
    ]
    save_policy(residual, tmp_path / "p.safetensors")
    loaded = load_policy(tmp_path / "p.safetensors")
    assert isinstance(loaded, ResidualPolicy) and loaded.censored
    obs, actions = torch.randn(4, 3), torch.tensor([[1.0, 0.2]] * 4)
    torch.testing.assert_close(loaded.log_prob(obs, actions), residual.log_prob(obs, actions))
    # a policy saved before the option existed (no "censored" in its config) loads with the density
    config = {k: v for k, v in base.config.items() if k != "censored"}
    metadata = {"format": "mmpref.GaussianPolicy", "config": json.dumps(config)}
    save_file(base.state_dict(), str(tmp_path / "old.safetensors"), metadata=metadata)
    assert not load_policy(tmp_path / "old.safetensors").censored
