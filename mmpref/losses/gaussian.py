r"""PEARL robust reward learning: Gaussian step rewards, Gaussian segment returns, a Bradley-Terry loss on them.

PEARL (Liu et al. 2023, "Zero-Shot Preference Learning for Offline RL via Optimal Transport", §4.2 "Robust Reward
Learning") models the reward of each step as a Gaussian, r_t ~ N(μ_t, σ_t²), so that a segment's return is

.. math:: R(\sigma) \sim \mathcal N\Big(\sum_t \mu_t,\ \sum_t \sigma_t^2\Big)

(independent steps), trains it with a Bradley-Terry likelihood on the (noisy, transferred) labels and keeps the
variance from collapsing with a KL regulariser towards N(0, 1) per step. Segments whose labels are unreliable can then
be explained by a large variance instead of a distorted mean.

These do not fit the pairwise registry's ``(score_w, score_l)`` signature (they take a mean and a variance per
segment), so they are exported from :mod:`mmpref.losses` directly. All functions return the **unreduced** loss.
"""

from __future__ import annotations

import math

import torch

from mmpref.losses._tensors import check_positive, check_same_shape, compute_dtype, softplus


def gaussian_segment_return(step_mean: torch.Tensor, step_logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of a segment's return from per-step Gaussian rewards (PEARL §4.2).

    .. math:: \mu_R = \sum_{t=0}^{H-1} \mu_t, \qquad \sigma_R^2 = \sum_{t=0}^{H-1} e^{\log\sigma_t^2}

    Args:
        step_mean: per-step reward means μ_t, ``[..., H]``.
        step_logvar: per-step log-variances log σ_t², ``[..., H]``.

    Returns:
        ``(mean, var)``, each ``[...]``.

    >>> gaussian_segment_return(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2))
    (tensor([3.]), tensor([2.]))
    """
    check_same_shape("step_mean", step_mean, "step_logvar", step_logvar)
    return step_mean.sum(-1), step_logvar.exp().sum(-1)


def gaussian_bradley_terry(
    mean_a: torch.Tensor,
    var_a: torch.Tensor,
    mean_b: torch.Tensor,
    var_b: torch.Tensor,
    target: float | torch.Tensor = 1.0,
    beta: float = 1.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Bradley-Terry cross-entropy on Gaussian segment returns R_a ~ N(μ_a, σ_a²), R_b ~ N(μ_b, σ_b²).

    With ``noise`` (standard normal draws ``[S, 2, B]``, passed in so the function holds no hidden RNG) the returns
    are reparameterised samples R = μ + σ·z, as PEARL trains its reward, and the loss is the sample mean

    .. math:: \ell = \frac1S \sum_s \Big[ -p \log\sigma(\beta(R_a^s - R_b^s)) - (1-p)\log\sigma(\beta(R_b^s - R_a^s))
              \Big]

    Without ``noise`` the expectation of σ(βΔR) over ΔR ~ N(Δμ, σ_a² + σ_b²) is taken in closed form by the probit
    approximation E[σ(x)] ≈ σ(m / √(1 + π s²/8)) for x ~ N(m, s²) (MacKay 1992), i.e. the deterministic margin is
    shrunk by the uncertainty:

    .. math:: \ell = \mathrm{softplus}(-\kappa) \cdot p + \mathrm{softplus}(\kappa)(1-p), \quad
              \kappa = \frac{\beta\,(\mu_a - \mu_b)}{\sqrt{1 + \pi\beta^2(\sigma_a^2 + \sigma_b^2)/8}}

    With zero variances both forms equal :func:`mmpref.losses.soft_bradley_terry` on the means.

    Args:
        mean_a: return means of the first segments, ``[B]``.
        var_a: return variances of the first segments (≥ 0), ``[B]``.
        mean_b: return means of the second segments, ``[B]``.
        var_b: return variances of the second segments (≥ 0), ``[B]``.
        target: P(a ≻ b) in [0, 1], a float or ``[B]`` (soft, transferred labels welcome; 0.5 is a tie).
        beta: inverse temperature β > 0.
        noise: optional standard normal draws ``[S, 2, B]`` (row 0 for a, row 1 for b); ``None`` uses the closed form.

    Returns:
        The unreduced loss, ``[B]``.

    >>> gaussian_bradley_terry(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([3.0]))
    tensor([0.6931])
    """
    check_positive("beta", beta)
    for name, tensor in (("var_a", var_a), ("mean_b", mean_b), ("var_b", var_b)):
        check_same_shape("mean_a", mean_a, name, tensor)
    dtype = compute_dtype(mean_a, var_a, mean_b, var_b)
    mean_a, var_a, mean_b, var_b = (t.to(dtype) for t in (mean_a, var_a, mean_b, var_b))
    if isinstance(target, torch.Tensor):
        target = target.to(device=mean_a.device, dtype=dtype)
    if noise is None:
        spread = torch.sqrt(1.0 + math.pi * beta**2 * (var_a + var_b) / 8.0)
        x = beta * (mean_a - mean_b) / spread
        return target * softplus(-x) + (1.0 - target) * softplus(x)
    if noise.dim() != 3 or noise.shape[1] != 2 or noise.shape[2:] != mean_a.shape:
        raise ValueError(
            f"noise must have shape [S, 2, {', '.join(map(str, mean_a.shape))}] (S samples, a then b), "
            f"got {tuple(noise.shape)}"
        )
    noise = noise.to(device=mean_a.device, dtype=dtype)
    # Clamp inside the square root only for the gradient at σ² = 0 (√ has an infinite slope there).
    return_a = mean_a + var_a.clamp_min(1e-12).sqrt() * noise[:, 0]
    return_b = mean_b + var_b.clamp_min(1e-12).sqrt() * noise[:, 1]
    x = beta * (return_a - return_b)
    return (target * softplus(-x) + (1.0 - target) * softplus(x)).mean(0)


def gaussian_kl_standard(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""KL divergence of N(μ, σ²) from the standard normal, element-wise (PEARL's variance regulariser).

    .. math:: \mathrm{KL}\big(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, 1)\big) = \tfrac12\big(\mu^2 + \sigma^2
              - 1 - \log\sigma^2\big)

    PEARL §4.2 adds this per step to the preference loss so that the predicted variance neither collapses to 0 nor
    explodes (the same term as a VAE's, Kingma & Welling 2014, appendix B).

    Args:
        mean: means μ, any shape.
        logvar: log-variances log σ², same shape.

    Returns:
        The unreduced KL, same shape; 0 exactly at μ = 0, log σ² = 0.

    >>> gaussian_kl_standard(torch.tensor([0.0, 1.0]), torch.zeros(2))
    tensor([0.0000, 0.5000])
    """
    check_same_shape("mean", mean, "logvar", logvar)
    dtype = compute_dtype(mean, logvar)
    mean, logvar = mean.to(dtype), logvar.to(dtype)
    return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)
