"""Listwise preference losses on ranked lists of candidates.

Every function takes ``scores [B, K]`` (the model's), ``targets [B, K]`` (the labels: higher = better, e.g. a
rating, a utility or K − rank) and an optional boolean ``mask [B, K]`` (True = a valid entry; ragged lists are
padded and masked). It returns the **unreduced** loss per list, ``[B]``; a list with fewer than two valid entries
has loss 0. Float16/bfloat16 inputs are computed and returned in float32. Masked entries get neither loss nor
gradient, whatever their score or target.

Ties: ``listnet`` and ``ranklist`` (with ``skip=None``) are invariant to reordering tied targets. Plackett-Luce
needs one total order; ties are broken by position in the list (a stable sort), which is documented, deterministic
and free of hidden randomness, but not tie-invariant: prefer the other two when targets tie often.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mmpref.losses._tensors import MASK_FILL, check_positive, check_same_shape, compute_dtype


def _prepare(
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and return (scores, targets, mask) in the compute dtype, mask as bool."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, K], got shape {tuple(scores.shape)}")
    check_same_shape("scores", scores, "targets", targets)
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    else:
        check_same_shape("scores", scores, "mask", mask)
        mask = mask.to(device=scores.device, dtype=torch.bool)
    dtype = compute_dtype(scores)
    # Zero masked slots first so that garbage there (NaN, inf) can reach neither the loss nor any gradient.
    scores = scores.to(dtype).masked_fill(~mask, 0.0)
    targets = targets.to(device=scores.device, dtype=dtype).masked_fill(~mask, 0.0)
    return scores, targets, mask


def _sort_by_targets(
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reorder each list best-first by target (stable: ties keep list order); masked entries go last."""
    key = targets.masked_fill(~mask, float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    return scores.gather(-1, order), targets.gather(-1, order), mask.gather(-1, order)


def listnet(
    scores: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    target_temperature: float = 1.0,
) -> torch.Tensor:
    r"""ListNet top-one cross-entropy between the target and the score distributions over a list.

    .. math::
        \ell = -\sum_{j} \mathrm{softmax}(y / T)_j \, \log \mathrm{softmax}(\beta s)_j

    Cao et al. (2007), "Learning to Rank: From Pairwise Approach to Listwise Approach", top-one probability
    with the exponential and cross-entropy metric. The minimum is the entropy of the target distribution, not
    0. Sums run over valid entries only.

    Args:
        scores: model scores, ``[B, K]``.
        targets: labels, higher = better, ``[B, K]``.
        mask: valid entries, ``[B, K]`` bool; ``None`` means all valid.
        beta: inverse temperature β > 0 on the scores.
        target_temperature: temperature T > 0 turning targets into a distribution.

    Returns:
        The unreduced loss per list, ``[B]``.

    >>> listnet(torch.zeros(1, 4), torch.zeros(1, 4))  # uniform vs uniform: log 4
    tensor([1.3863])
    """
    check_positive("beta", beta)
    check_positive("target_temperature", target_temperature)
    scores, targets, mask = _prepare(scores, targets, mask)
    p_target = torch.softmax((targets / target_temperature).masked_fill(~mask, MASK_FILL), dim=-1)
    log_p = torch.log_softmax((beta * scores).masked_fill(~mask, MASK_FILL), dim=-1)
    per_entry = torch.where(mask, -p_target * log_p, torch.zeros_like(log_p))
    return torch.where(mask.sum(-1) >= 2, per_entry.sum(-1), torch.zeros_like(per_entry[..., 0]))


def plackett_luce(
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, *, beta: float = 1.0
) -> torch.Tensor:
    r"""Plackett-Luce negative log-likelihood of the target order (ListMLE).

    With π the order of the valid entries by decreasing target,

    .. math::
        \ell = -\sum_{i=1}^{n} \left[ \beta s_{\pi(i)} - \log \sum_{j=i}^{n} \exp(\beta s_{\pi(j)}) \right]

    Xia et al. (2008), "Listwise Approach to Learning to Rank: Theory and Algorithm", ListMLE (the likelihood
    loss with the Plackett-Luce permutation probability); listwise DPO uses it on implicit rewards. Computed in
    O(K log K) with a reversed ``logcumsumexp``. Ties in ``targets`` are broken by list position (stable sort).

    Args:
        scores: model scores, ``[B, K]``.
        targets: labels, higher = better, ``[B, K]``.
        mask: valid entries, ``[B, K]`` bool; ``None`` means all valid.
        beta: inverse temperature β > 0 on the scores.

    Returns:
        The unreduced loss per list, ``[B]``; for K = 2 it equals the Bradley-Terry loss.

    >>> plackett_luce(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    tensor([0.6931])
    """
    check_positive("beta", beta)
    scores, targets, mask = _prepare(scores, targets, mask)
    s_sorted, _, m_sorted = _sort_by_targets(beta * scores, targets, mask)
    filled = s_sorted.masked_fill(~m_sorted, MASK_FILL)
    # log Σ_{j ≥ i} exp(s_π(j)): cumulative log-sum-exp from the end of each list.
    tail_lse = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)
    per_position = torch.where(m_sorted, tail_lse - filled, torch.zeros_like(filled))
    return per_position.sum(-1)


RankListApprox = Literal["lse", "exact"]


def ranklist(
    scores: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    skip: int | None = None,
    approx: RankListApprox = "exact",
) -> torch.Tensor:
    r"""RankList: RankNet generalised to a list, with local and non-local constraints and skip-wise comparisons.

    Sort each list best-first by target. Item i must beat every strictly worse item j no more than ``skip``
    positions below it, the comparison window :math:`W_i = \{ j : y_j < y_i,\ 0 < \mathrm{pos}(j) - \mathrm{pos}(i)
    \le \mathrm{skip} \}`. The exact form multiplies the RankNet probabilities of all those comparisons; the
    log-sum-exp form asks i to beat a smooth maximum of its window in one term:

    .. math::
        \ell_{\text{exact}} = \sum_i \sum_{j \in W_i} \log\left(1 + e^{\beta (s_j - s_i)}\right) \qquad
        \ell_{\text{lse}} = \sum_i \log\left(1 + \sum_{j \in W_i} e^{\beta (s_j - s_i)}\right)

    Naini, Diaz & Busso (2025), "RankList: A Listwise Preference Learning Framework for Predicting Subjective
    Preferences" (arXiv 2508.09826): listwise RankNet with local (adjacent, ``skip=1``) and non-local (``skip`` > 1)
    constraints, the log-sum-exp approximation for efficiency and skip-wise comparisons, whose window a trainer can
    grow over training for progressive exposure. This is mmpref's reading of that description (the paper's full
    text was not available offline); the properties it guarantees are tested: ``skip=1`` is adjacent-pair RankNet,
    K = 2 is Bradley-Terry, and max_j ℓ_ij ≤ ℓ_lse,i ≤ ℓ_exact,i (the log-sum-exp form is a lower bound). Note that
    with ``skip=None`` and no tied targets the log-sum-exp form *is* Plackett-Luce: log(1 + Σ_{j>i} e^{s_j − s_i})
    = logsumexp_{j≥i} s_j − s_i. It differs from ListMLE only through the window and ties; the default is therefore
    the exact pairwise form. Strictly tied targets are never compared, so with ``skip=None`` the loss is invariant
    to reordering ties.

    Args:
        scores: model scores, ``[B, K]``.
        targets: labels, higher = better, ``[B, K]``.
        mask: valid entries, ``[B, K]`` bool; ``None`` means all valid.
        beta: inverse temperature β > 0 on the scores.
        skip: largest position gap compared; ``None`` compares every pair (fully non-local).
        approx: ``"lse"`` (one log-sum-exp term per item) or ``"exact"`` (every pair separately).

    Returns:
        The unreduced loss per list, ``[B]``.

    >>> ranklist(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[3.0, 2.0, 1.0]]))  # three pairs: 3 log 2
    tensor([2.0794])
    >>> ranklist(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[3.0, 2.0, 1.0]]), approx="lse")  # log 3 + log 2
    tensor([1.7918])
    """
    check_positive("beta", beta)
    if skip is not None and skip < 1:
        raise ValueError(f"skip is a position gap and must be >= 1 (or None for all pairs), got {skip}")
    if approx not in ("lse", "exact"):
        raise ValueError(f"approx must be one of 'lse', 'exact', got {approx!r}")
    scores, targets, mask = _prepare(scores, targets, mask)
    s, y, m = _sort_by_targets(beta * scores, targets, mask)
    k = s.shape[-1]
    position = torch.arange(k, device=s.device)
    gap = position[None, :] - position[:, None]  # gap[i, j] = pos(j) − pos(i)
    in_window = gap > 0 if skip is None else (gap > 0) & (gap <= skip)
    # compare[b, i, j]: item i (better) is compared with item j (strictly worse, inside the window).
    compare = in_window & m[:, :, None] & m[:, None, :] & (y[:, :, None] > y[:, None, :])
    diff = s[:, None, :] - s[:, :, None]  # diff[b, i, j] = s_j − s_i
    if approx == "exact":
        per_pair = torch.where(compare, F.softplus(diff), torch.zeros_like(diff))
        return per_pair.sum(dim=(-1, -2))
    window_lse = torch.logsumexp(diff.masked_fill(~compare, MASK_FILL), dim=-1)  # log Σ_{j∈W_i} e^{s_j − s_i}
    per_item = torch.where(compare.any(-1), F.softplus(window_lse), torch.zeros_like(window_lse))
    return per_item.sum(-1)
