"""Oracle tests for PEARL's Gaussian reward losses: hand values, plain-Python loops, a Monte-Carlo check, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from mmpref.losses import gaussian_bradley_terry, gaussian_kl_standard, gaussian_segment_return, soft_bradley_terry


def _nll_sigmoid(x: float) -> float:
    # −log σ(x) from the definition, in plain floats.
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def test_segment_return_hand_values():
    mean, var = gaussian_segment_return(torch.tensor([[1.0, 2.0, -0.5]]), torch.log(torch.tensor([[0.5, 1.0, 2.0]])))
    assert mean.item() == pytest.approx(2.5)
    assert var.item() == pytest.approx(3.5)


def test_closed_form_hand_values():
    one = torch.tensor([1.0])
    # Zero variance: −log σ(2 − 1) = log(1 + e^{−1}) = 0.3132617.
    assert gaussian_bradley_terry(2 * one, 0 * one, one, 0 * one).item() == pytest.approx(0.3132617, abs=1e-6)
    # σ_a² + σ_b² = 8/π → √(1 + π·(8/π)/8) = √2, κ = 1/√2 = 0.7071068, −log σ(κ) = log(1 + 0.49307) = 0.40083
    var = torch.tensor([4.0 / math.pi])
    expected = _nll_sigmoid(1.0 / math.sqrt(2.0))
    assert gaussian_bradley_terry(2 * one, var, one, var).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.400834, abs=1e-5)
    # β = 2 scales the margin and the variance: κ = 2/√(1 + π·4·(8/π)/8) = 2/√5.
    got = gaussian_bradley_terry(2 * one, var, one, var, beta=2.0).item()
    assert got == pytest.approx(_nll_sigmoid(2.0 / math.sqrt(5.0)), abs=1e-6)
    # Soft target p = 0.25: p·(−log σ(κ)) + (1−p)·(−log σ(−κ)) with κ = 1.
    got = gaussian_bradley_terry(2 * one, 0 * one, one, 0 * one, target=0.25).item()
    assert got == pytest.approx(0.25 * _nll_sigmoid(1.0) + 0.75 * _nll_sigmoid(-1.0), abs=1e-6)


def test_zero_variance_equals_soft_bradley_terry():
    g = torch.Generator().manual_seed(0)
    mean_a, mean_b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    target = torch.rand(16, generator=g)
    zeros = torch.zeros(16)
    expected = soft_bradley_terry(mean_a, mean_b, target, beta=1.5)
    torch.testing.assert_close(gaussian_bradley_terry(mean_a, zeros, mean_b, zeros, target, beta=1.5), expected)
    noise = torch.randn(5, 2, 16, generator=g)
    sampled = gaussian_bradley_terry(mean_a, zeros, mean_b, zeros, target, beta=1.5, noise=noise)
    torch.testing.assert_close(sampled, expected)


def test_sampled_form_matches_a_plain_python_loop():
    g = torch.Generator().manual_seed(1)
    mean_a, mean_b = torch.randn(4, generator=g), torch.randn(4, generator=g)
    var_a, var_b = torch.rand(4, generator=g) * 2, torch.rand(4, generator=g) * 2
    target = torch.tensor([1.0, 0.0, 0.5, 0.8])
    noise = torch.randn(3, 2, 4, generator=g)
    got = gaussian_bradley_terry(mean_a, var_a, mean_b, var_b, target, beta=0.7, noise=noise)
    for b in range(4):
        total = 0.0
        for s in range(3):
            r_a = mean_a[b].item() + math.sqrt(var_a[b].item()) * noise[s, 0, b].item()
            r_b = mean_b[b].item() + math.sqrt(var_b[b].item()) * noise[s, 1, b].item()
            p = target[b].item()
            total += p * _nll_sigmoid(0.7 * (r_a - r_b)) + (1 - p) * _nll_sigmoid(0.7 * (r_b - r_a))
        assert got[b].item() == pytest.approx(total / 3, abs=1e-5)


def test_closed_form_approximates_the_monte_carlo_expectation():
    # The probit approximation is of E[σ(x)], so compare probabilities: exp(−ℓ) with target 1 is P(a ≻ b).
    mean_a, var_a = torch.tensor([1.0, 0.5, -0.3]), torch.tensor([2.0, 0.1, 5.0])
    mean_b, var_b = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 0.1, 3.0])
    closed = torch.exp(-gaussian_bradley_terry(mean_a, var_a, mean_b, var_b))
    z = torch.randn(400_000, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = (mean_a + var_a.sqrt() * z[:, 0]) - (mean_b + var_b.sqrt() * z[:, 1])
    monte_carlo = torch.sigmoid(delta).mean(0).float()
    torch.testing.assert_close(closed, monte_carlo, atol=0.01, rtol=0)


def test_uncertainty_shrinks_the_preference_towards_a_tie():
    one = torch.tensor([1.0])
    losses = [gaussian_bradley_terry(3 * one, v * one, one, v * one).item() for v in (0.0, 1.0, 10.0, 1e4)]
    assert losses == sorted(losses)
    assert losses[-1] == pytest.approx(math.log(2), abs=0.02)


def test_swap_with_flipped_target_is_the_same_loss():
    g = torch.Generator().manual_seed(2)
    m_a, m_b, v_a, v_b = torch.randn(8, generator=g), torch.randn(8, generator=g), torch.rand(8), torch.rand(8)
    p = torch.rand(8, generator=g)
    torch.testing.assert_close(
        gaussian_bradley_terry(m_a, v_a, m_b, v_b, p), gaussian_bradley_terry(m_b, v_b, m_a, v_a, 1 - p)
    )


def test_kl_hand_values_and_torch_distributions():
    # ½(μ² + σ² − 1 − log σ²): μ = 1, σ² = 1 → 0.5; μ = 0, σ² = e → ½(e − 2) = 0.35914.
    got = gaussian_kl_standard(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 0.5 * (math.e - 2.0)]))
    mean, logvar = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(gaussian_kl_standard(mean, logvar), reference)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(5, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2)]
    var_a, var_b = (torch.rand(5, generator=g, dtype=torch.float64).add(0.1).requires_grad_() for _ in range(2))
    target = torch.rand(5, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 2, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, va, b, vb: gaussian_bradley_terry(a, va, b, vb, target, beta=1.3), (args[0], var_a, args[1], var_b)
    )
    assert torch.autograd.gradcheck(
        lambda a, va, b, vb: gaussian_bradley_terry(a, va, b, vb, target, noise=noise),
        (args[0], var_a, args[1], var_b),
    )
    logvar = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(gaussian_kl_standard, (args[0], logvar))
    step_mean = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    step_logvar = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, lv: gaussian_segment_return(m, lv)[1], (step_mean, step_logvar))


def test_half_precision_is_computed_in_float32():
    x = torch.tensor([1.0], dtype=torch.float16)
    assert gaussian_bradley_terry(x, x, x, x).dtype == torch.float32
    assert gaussian_kl_standard(x, x).dtype == torch.float32


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="var_b"):
        gaussian_bradley_terry(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"noise must have shape \[S, 2, 3\]"):
        gaussian_bradley_terry(*(torch.zeros(3),) * 4, noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="beta"):
        gaussian_bradley_terry(*(torch.zeros(3),) * 4, beta=0.0)
    with pytest.raises(ValueError, match="logvar"):
        gaussian_kl_standard(torch.zeros(3), torch.zeros(4))
