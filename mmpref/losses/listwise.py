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

from mmpref.losses._tensors import MASK_FILL, check_positive, check_same_shape, compute_dtype, softplus


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


# exp(x − row max) is summed directly only when every valid score of the list lies within this range of the list's
# maximum, so no term that matters can underflow (float32 underflows below e^−87); wider lists take the exact
# log-sum-exp path. The fast path avoids logcumsumexp's slow backward on the CPU (see scripts/bench_losses.py).
_FAST_RANGE = {torch.float32: 60.0, torch.float64: 600.0}


def _spread_rows(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-list shift (max valid score, no gradient) and the lists too spread out for the shifted-exp fast path."""
    detached = x.detach()
    shift = detached.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
    shift = torch.where(mask.any(-1, keepdim=True), shift, torch.zeros_like(shift))
    low = detached.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)
    too_wide = (shift - low).squeeze(-1) > _FAST_RANGE.get(x.dtype, 60.0)
    return shift, too_wide


def _plackett_luce_sorted_reference(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce NLL of lists already in target order, with ``logcumsumexp`` (exact at any spread; slower)."""
    filled = x.masked_fill(~mask, MASK_FILL)
    tail = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)  # log Σ_{j ≥ i} exp(x_j)
    return torch.where(mask, tail - filled, torch.zeros_like(filled)).sum(-1)


class _PlackettLuceSorted(torch.autograd.Function):
    """Fused Plackett-Luce NLL of lists in target order, for lists whose scores lie within ``_FAST_RANGE``.

    Forward: with e_i = exp(x_i − c) (c = the list's max, 0 for masked i) and tails T_i = Σ_{j ≥ i} e_j,
    ℓ = Σ_{valid i} [log T_i − (x_i − c)]. Backward, by hand: ∂ℓ/∂x_k = m_k (e_k Σ_{valid i ≤ k} 1/T_i − 1).
    Two cumulative sums and a few element-wise ops replace ``logcumsumexp``'s slow backward; parity with
    :func:`_plackett_luce_sorted_reference` is tested forward and backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        weights = torch.where(mask, torch.exp(x - shift), torch.zeros_like(x))
        tail = weights.flip(-1).cumsum(-1).flip(-1)
        # Masked tails (nothing left) and underflowed ones (too-wide lists, recomputed by the caller) take 1 here,
        # so neither the loss nor the backward pass sees log 0 or 1/0.
        usable = mask & (tail > torch.finfo(tail.dtype).tiny)
        tail = torch.where(usable, tail, torch.ones_like(tail))
        ctx.save_for_backward(weights, tail, usable, mask)
        return torch.where(mask, torch.log(tail) - (x - shift), torch.zeros_like(x)).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weights, tail, usable, mask = ctx.saved_tensors
        inverse_tails = torch.where(usable, tail.reciprocal(), torch.zeros_like(tail)).cumsum(-1)
        per_entry = torch.where(mask, weights * inverse_tails - 1.0, torch.zeros_like(weights))
        return grad.unsqueeze(-1) * per_entry, None, None


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
    O(K log K): one sort, then a fused reversed cumulative sum of shifted exponentials with a hand-written
    backward (exact ``logcumsumexp`` for lists whose scores spread wider than float precision allows).
    Ties in ``targets`` are broken by list position (stable sort).

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
    shift, too_wide = _spread_rows(s_sorted, m_sorted)
    loss = _PlackettLuceSorted.apply(s_sorted, m_sorted, shift)
    if bool(too_wide.any()):
        rows = too_wide.nonzero().squeeze(-1)
        loss = loss.index_put((rows,), _plackett_luce_sorted_reference(s_sorted[rows], m_sorted[rows]))
    return loss


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
    # Only pairs (i above j) inside the window can be compared: enumerate them once, [P] with P ≤ K(K−1)/2.
    upper_i, upper_j = torch.triu_indices(k, k, offset=1, device=s.device)
    if skip is not None:
        near = (upper_j - upper_i) <= skip
        upper_i, upper_j = upper_i[near], upper_j[near]
    compare = m[:, upper_i] & m[:, upper_j] & (y[:, upper_i] > y[:, upper_j])  # [B, P]
    if approx == "exact":
        # index_select, not s[:, idx]: its backward is an index_add, far faster than advanced indexing's on CPU.
        per_pair = softplus(s.index_select(-1, upper_j) - s.index_select(-1, upper_i))
        return torch.where(compare, per_pair, torch.zeros_like(per_pair)).sum(-1)
    # log(1 + Σ_{j∈W_i} e^{s_j − s_i}) = log(e^{s_i − c} + Σ_{j∈W_i} e^{s_j − c}) − (s_i − c) for any shift c.
    window = torch.zeros(s.shape[0], k, k, dtype=s.dtype, device=s.device)
    window[:, upper_i, upper_j] = compare.to(s.dtype)  # window[b, i, j] = 1 if j ∈ W_i
    shift, too_wide = _spread_rows(s, m)
    weights = torch.where(m, torch.exp(s - shift), torch.zeros_like(s))
    window_sum = torch.bmm(window, weights.unsqueeze(-1)).squeeze(-1)
    own = torch.where(m, weights, torch.ones_like(weights))
    total = own + window_sum  # underflows to 0 only in too-wide lists, which are recomputed below
    total = torch.where(total > torch.finfo(total.dtype).tiny, total, torch.ones_like(total))
    per_item = torch.log(total) - torch.where(m, s - shift, torch.zeros_like(s))
    if bool(too_wide.any()):
        rows = too_wide.nonzero().squeeze(-1)
        diff = s[rows, None, :] - s[rows, :, None]  # diff[r, i, j] = s_j − s_i
        exact = softplus(torch.logsumexp(diff.masked_fill(window[rows] == 0, MASK_FILL), dim=-1))
        per_item = per_item.index_put((rows,), exact)
    has_window = window.sum(-1) > 0
    return torch.where(has_window, per_item, torch.zeros_like(per_item)).sum(-1)
