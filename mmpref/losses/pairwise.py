"""Pairwise preference losses on scores of a winner and a loser.

Every function takes scores ``[B]`` (any shape, as long as winner and loser match), returns the **unreduced** loss
of the same shape, and follows the inputs' device. Float16/bfloat16 inputs are computed and returned in float32
(see :func:`mmpref.losses._tensors.compute_dtype`). All forms are written in ``softplus`` so that a margin of
|Δ| = 1e4 gives a finite loss and gradient: −log σ(x) = softplus(−x).

Notation: Δ = s_w − s_l, the winner's score minus the loser's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmpref.losses._tensors import check_positive, check_same_shape, compute_dtype, softplus


def _scaled_margin(score_w: torch.Tensor, score_l: torch.Tensor, beta: float) -> torch.Tensor:
    """β·(s_w − s_l) in the compute dtype, after checking shapes."""
    check_same_shape("score_w", score_w, "score_l", score_l)
    dtype = compute_dtype(score_w, score_l)
    return beta * (score_w.to(dtype) - score_l.to(dtype))


def bradley_terry(score_w: torch.Tensor, score_l: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Bradley-Terry / RankNet loss: the negative log-likelihood that the winner wins.

    .. math:: \ell = -\log \sigma(\beta (s_w - s_l)) = \mathrm{softplus}(-\beta (s_w - s_l))

    Bradley & Terry (1952); Burges et al. (2005), RankNet cost with target probability 1; the DPO / Diffusion-DPO loss
    when the scores are implicit rewards (Rafailov et al. 2023, eq. 7; Wallace et al. 2023, the final Diffusion-DPO
    objective).

    Args:
        score_w: scores of the preferred candidates, ``[B]``.
        score_l: scores of the rejected candidates, ``[B]``.
        beta: inverse temperature β > 0.

    Returns:
        The unreduced loss, ``[B]``; log 2 where the scores tie.

    >>> bradley_terry(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.6931])
    """
    return softplus(-_scaled_margin(score_w, score_l, beta))


def hinge(score_w: torch.Tensor, score_l: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Hinge (SLiC / RankSVM) loss with unit margin.

    .. math:: \ell = \max(0,\ 1 - \beta (s_w - s_l))

    Herbrich et al. (2000), RankSVM; Zhao et al. (2023), SLiC-HF calibration loss (margin δ = 1/β).

    Args:
        score_w: scores of the preferred candidates, ``[B]``.
        score_l: scores of the rejected candidates, ``[B]``.
        beta: scale β > 0 of the margin.

    Returns:
        The unreduced loss, ``[B]``; 0 once β·Δ ≥ 1.

    >>> hinge(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    tensor([0., 1.])
    """
    return F.relu(1.0 - _scaled_margin(score_w, score_l, beta))


def ipo(score_w: torch.Tensor, score_l: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Identity preference optimisation (IPO) loss: regress the margin onto 1/(2β).

    .. math:: \ell = \left( (s_w - s_l) - \frac{1}{2\beta} \right)^2

    Azar et al. (2023), "A General Theoretical Paradigm to Understand Learning from Human Preferences", the
    empirical IPO loss (τ there is β here). Unlike Bradley-Terry the margin is pulled to a finite target, so
    deterministic preferences do not push scores to infinity. β is the regularisation strength
    and has no default on purpose.

    Args:
        score_w: scores of the preferred candidates, ``[B]``.
        score_l: scores of the rejected candidates, ``[B]``.
        beta: regularisation β > 0; the target margin is 1/(2β).

    Returns:
        The unreduced loss, ``[B]``.

    >>> ipo(torch.tensor([1.0]), torch.tensor([0.0]), beta=0.5)
    tensor([0.])
    """
    check_positive("beta", beta)
    check_same_shape("score_w", score_w, "score_l", score_l)
    dtype = compute_dtype(score_w, score_l)
    delta = score_w.to(dtype) - score_l.to(dtype)
    return (delta - 1.0 / (2.0 * beta)) ** 2


def robust(score_w: torch.Tensor, score_l: torch.Tensor, beta: float = 1.0, eps: float = 0.1) -> torch.Tensor:
    r"""Label-smoothed Bradley-Terry loss for labels flipped with probability ε.

    .. math:: \ell = -(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)

    Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): the cross-entropy against a smoothed
    target 1 − ε. Its minimum sits at a finite margin σ(βΔ) = 1 − ε, so a few wrong labels cannot drive scores apart
    without bound.

    Args:
        score_w: scores of the (labelled) preferred candidates, ``[B]``.
        score_l: scores of the (labelled) rejected candidates, ``[B]``.
        beta: inverse temperature β > 0.
        eps: assumed label-flip rate ε in [0, 0.5).

    Returns:
        The unreduced loss, ``[B]``; equals :func:`bradley_terry` when ε = 0.

    >>> robust(torch.tensor([0.0]), torch.tensor([0.0]), eps=0.2)
    tensor([0.6931])
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps is a label-flip rate and must lie in [0, 0.5), got {eps}")
    x = _scaled_margin(score_w, score_l, beta)
    # softplus(x) = softplus(−x) + x, so the two terms share one softplus: ℓ = softplus(−βΔ) + ε·βΔ.
    return softplus(-x) + eps * x


def margin_bradley_terry(
    score_w: torch.Tensor, score_l: torch.Tensor, margin: float | torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    r"""Bradley-Terry loss that asks the winner to win by at least a margin m.

    .. math:: \ell = -\log \sigma(\beta (s_w - s_l) - m)

    Touvron et al. (2023), Llama 2 eq. 2 (margin from the rating gap); Wang et al. (2024), "Secrets of RLHF II"
    (per-pair preference strength as the margin). ``margin`` may be one number or a tensor ``[B]`` per pair.

    Args:
        score_w: scores of the preferred candidates, ``[B]``.
        score_l: scores of the rejected candidates, ``[B]``.
        margin: required margin m (on the β-scaled difference), a float or ``[B]``.
        beta: inverse temperature β > 0.

    Returns:
        The unreduced loss, ``[B]``; equals :func:`bradley_terry` when m = 0.

    >>> margin_bradley_terry(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0)
    tensor([0.6931])
    """
    x = _scaled_margin(score_w, score_l, beta)
    if isinstance(margin, torch.Tensor):
        margin = margin.to(device=x.device, dtype=x.dtype)
    return softplus(margin - x)


def soft_bradley_terry(
    score_a: torch.Tensor, score_b: torch.Tensor, target: float | torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    r"""Bradley-Terry cross-entropy against a soft label p = P(a ≻ b); p = 0.5 is a tie.

    .. math:: \ell = -p\log\sigma(\beta(s_a - s_b)) - (1-p)\log\sigma(\beta(s_b - s_a))

    Burges et al. (2005), RankNet cost with target probability P̄_ij (½ for ties); Pick-a-Pic ties are label 0.5.
    The loss is minimal where σ(β(s_a − s_b)) = p, so a tie pulls the two scores together.

    Args:
        score_a: scores of the first candidates, ``[B]``.
        score_b: scores of the second candidates, ``[B]``.
        target: probability in [0, 1] that a is preferred, a float or ``[B]``.
        beta: inverse temperature β > 0.

    Returns:
        The unreduced loss, ``[B]``.

    >>> soft_bradley_terry(torch.tensor([0.0]), torch.tensor([0.0]), 0.5)
    tensor([0.6931])
    """
    x = _scaled_margin(score_a, score_b, beta)
    if isinstance(target, torch.Tensor):
        target = target.to(device=x.device, dtype=x.dtype)
    return target * softplus(-x) + (1.0 - target) * softplus(x)


PairwiseLoss = Callable[..., torch.Tensor]


def soft_pairwise(
    loss_fn: PairwiseLoss,
    score_a: torch.Tensor,
    score_b: torch.Tensor,
    target: float | torch.Tensor,
    **loss_kwargs: object,
) -> torch.Tensor:
    r"""Any pairwise loss under a soft label p = P(a ≻ b): the label-weighted mixture of both orders.

    .. math:: \ell = p\,\ell(s_a, s_b) + (1-p)\,\ell(s_b, s_a)

    For :func:`bradley_terry` this is exactly :func:`soft_bradley_terry`; for the others it is the natural
    extension that treats a tie (p = 0.5) symmetrically. Terms with zero weight are still evaluated, so gradients
    stay defined everywhere.

    Args:
        loss_fn: a pairwise loss with signature ``(score_w, score_l, **loss_kwargs)``.
        score_a: scores of the first candidates, ``[B]``.
        score_b: scores of the second candidates, ``[B]``.
        target: probability in [0, 1] that a is preferred, a float or ``[B]``.
        **loss_kwargs: passed to ``loss_fn`` (``beta``, ``eps``, ``margin``...).

    Returns:
        The unreduced loss, ``[B]``.
    """
    forward = loss_fn(score_a, score_b, **loss_kwargs)
    backward = loss_fn(score_b, score_a, **loss_kwargs)
    if isinstance(target, torch.Tensor):
        target = target.to(device=forward.device, dtype=forward.dtype)
    return target * forward + (1.0 - target) * backward
