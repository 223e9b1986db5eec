"""Pointwise (unpaired) preference losses: one score per candidate and a like / dislike label, no pairs.

Every function returns the **unreduced** loss ``[B]`` and follows the inputs' device; float16/bfloat16 scores are
computed in float32 (:func:`mmpref.losses._tensors.compute_dtype`).
"""

from __future__ import annotations

import torch

from mmpref.losses._tensors import check_positive, check_same_shape, compute_dtype


def kto(
    score: torch.Tensor,
    desirable: torch.Tensor,
    beta: float = 1.0,
    reference_point: torch.Tensor | float = 0.0,
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
) -> torch.Tensor:
    r"""KTO: Kahneman-Tversky value of each candidate's implicit reward relative to a reference point.

    .. math:: \ell = \lambda_y - v(x), \quad v(x) = \begin{cases} \lambda_D\,\sigma(\beta (s - z_0)) &
              \text{desirable} \\ \lambda_U\,\sigma(\beta (z_0 - s)) & \text{undesirable} \end{cases}
              \;=\; \lambda_y\,\sigma(-w\,\beta\,(s - z_0)),\ w = \pm 1

    Ethayarajh et al. (2024), "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8 (s = log πθ/πref,
    z₀ = the KL reference point, detached); Li et al. (2024), "Aligning Diffusion Models by Optimizing Human
    Utility" (Diffusion-KTO): the same objective with the Diffusion-DPO implicit reward
    s = −(‖ε − ε_θ(x_t, t)‖² − ‖ε − ε_ref(x_t, t)‖²) of single liked or disliked images.

    Args:
        score: implicit rewards ``[B]`` (policy minus reference log-likelihood ratio, up to the folded constant).
        desirable: ``[B]`` booleans or 0/1: liked (1) or disliked (0).
        beta: inverse temperature β > 0.
        reference_point: z₀, a scalar or ``[B]`` (the caller's detached KL estimate; KTO clamps it at 0).
        lambda_desirable: λ_D, weight of liked candidates.
        lambda_undesirable: λ_U, weight of disliked ones (λ_D n_D / (λ_U n_U) in [1, 4/3] is KTO's advice).

    Returns:
        The unreduced loss ``[B]``; λ_y / 2 where s = z₀.

    >>> kto(torch.tensor([0.0, 0.0]), torch.tensor([1, 0]))
    tensor([0.5000, 0.5000])
    >>> kto(torch.tensor([2.0, 2.0]), torch.tensor([True, False])).round(decimals=4)
    tensor([0.1192, 0.8808])
    """
    check_positive("beta", beta)
    check_positive("lambda_desirable", lambda_desirable)
    check_positive("lambda_undesirable", lambda_undesirable)
    check_same_shape("score", score, "desirable", desirable)
    if desirable.dtype != torch.bool and not bool(((desirable == 0) | (desirable == 1)).all()):
        raise ValueError("desirable must hold booleans or 0/1 (liked / disliked); threshold ratings first")
    dtype = compute_dtype(score)
    liked = desirable.to(torch.bool)
    sign = torch.where(liked, 1.0, -1.0).to(dtype=dtype, device=score.device)
    weight = torch.where(liked, lambda_desirable, lambda_undesirable).to(dtype=dtype, device=score.device)
    z0 = torch.as_tensor(reference_point, dtype=dtype, device=score.device)
    return weight * torch.sigmoid(-sign * beta * (score.to(dtype) - z0))
