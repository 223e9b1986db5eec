r"""Diffusion-DPO scores: the denoising-error improvement of the policy over the reference.

For a candidate image x with noise ε and timestep t shared by every candidate of the same comparison,

.. math:: s(x) = -\left( \lVert \varepsilon - \varepsilon_\theta(x_t, t) \rVert^2
                         - \lVert \varepsilon - \varepsilon_{\text{ref}}(x_t, t) \rVert^2 \right)

(with v in place of ε for v-prediction), the norm being a per-pixel **mean** as in the official Diffusion-DPO code.
Wallace et al. (2023), "Diffusion Model Alignment Using Direct Preference Optimization", eq. 14: the loss is
−log σ(βTω(λ_t)·(s(x^w) − s(x^l))) — the Bradley-Terry loss of the core on these scores; the constant βTω(λ_t) is
folded once, in :class:`~mmpref.vision.diffusion.system.DiffusionDPOSystem`.
"""

from __future__ import annotations

import torch


def denoising_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over every non-batch dimension: ``[N, ...]`` → ``[N]``.

    >>> denoising_error(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
    tensor([1., 1.])
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must match")
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def diffusion_dpo_scores(policy_error: torch.Tensor, reference_error: torch.Tensor) -> torch.Tensor:
    r"""Implicit reward of each candidate (up to the folded constant): :math:`s = -(e_\theta - e_{\text{ref}})`.

    Args:
        policy_error: the policy's denoising errors, any shape (``[B]`` pairs, ``[B, K]`` lists).
        reference_error: the reference's errors on the same noisy inputs, same shape.

    Returns:
        Scores of the same shape; positive where the policy denoises the candidate better than the reference.

    >>> diffusion_dpo_scores(torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.2]))
    tensor([ 0.1000, -0.1000])
    """
    if policy_error.shape != reference_error.shape:
        raise ValueError(
            f"policy_error {tuple(policy_error.shape)} and reference_error {tuple(reference_error.shape)} must match"
        )
    return -(policy_error - reference_error)
