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
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None, zero_masked: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and return (scores, targets, mask) in the compute dtype, mask as bool.

    Masked score slots are zeroed (``zero_masked``) so that garbage there (NaN, inf) reaches neither the loss nor
    any gradient; a caller that gates every use of a score by the mask itself may skip it. Masked targets are left
    as they are, since every use of a target below is gated by the mask.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, K], got shape {tuple(scores.shape)}")
    check_same_shape("scores", scores, "targets", targets)
    dtype = compute_dtype(scores)
    targets = targets.to(device=scores.device, dtype=dtype)
    if mask is None:
        return scores.to(dtype), targets, torch.ones_like(scores, dtype=torch.bool)
    check_same_shape("scores", scores, "mask", mask)
    mask = mask.to(device=scores.device, dtype=torch.bool)
    scores = scores.to(dtype)
    return (scores.masked_fill(~mask, 0.0) if zero_masked else scores), targets, mask


def _best_first_order(targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Indices that put each list best-first by target (ties keep list order), masked entries last.

    Returns the order, the mask in that order, and whether any two valid entries of a list tie. The unstable sort
    is much faster on the CPU and gives the same order when no valid targets tie; only then is the stable sort
    skipped.
    """
    key = targets.masked_fill(~mask, float("-inf"))
    sorted_key, order = torch.sort(key, dim=-1, descending=True)
    sorted_mask = sorted_key > float("-inf")
    ties = bool(((sorted_key[:, 1:] == sorted_key[:, :-1]) & sorted_mask[:, 1:]).any())
    if ties:
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices
        sorted_mask = mask.gather(-1, order)
    return order, sorted_mask, ties


def _scale(scores: torch.Tensor, beta: float) -> torch.Tensor:
    """β·s, skipping the multiplication for β = 1."""
    return scores if beta == 1.0 else beta * scores


def _safe_tail_floor(dtype: torch.dtype) -> float:
    """Smallest tail sum trusted by the fused Plackett-Luce path: far above the subnormal range of ``dtype``.

    A tail below it means a list whose scores spread wider than ``exp`` of the shifted scores can represent
    (about 80 nats in float32, 640 in float64); such lists are recomputed exactly with ``logcumsumexp``.
    """
    return torch.finfo(dtype).tiny ** 0.9


def _plackett_luce_sorted_reference(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce NLL of lists already in target order, with ``logcumsumexp`` (exact at any spread; slower)."""
    filled = x.masked_fill(~mask, MASK_FILL)
    tail = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)  # log Σ_{j ≥ i} exp(x_j)
    return torch.where(mask, tail - filled, torch.zeros_like(filled)).sum(-1)


class _PlackettLuceSorted(torch.autograd.Function):
    """Fused Plackett-Luce NLL of lists in target order; also returns which lists it could not compute exactly.

    Forward: with c the list's largest valid score, e_i = m_i exp(x_i − c) and tails T_i = Σ_{j ≥ i} e_j,
    ℓ = Σ_i m_i [log T_i − (x_i − c)]. Backward, by hand: ∂ℓ/∂x_k = m_k (e_k Σ_{i ≤ k} m_i / T_i − 1).
    Cumulative sums and element-wise ops replace ``logcumsumexp``, whose backward dominates on the CPU; parity with
    :func:`_plackett_luce_sorted_reference` is tested forward and backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Masked slots may hold garbage (NaN, inf): every use of x below is gated by the mask with `where`.
        invalid = ~mask
        centred = x.masked_fill(invalid, float("-inf"))
        shift = centred.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
        centred = centred - shift  # −inf at masked slots, so their weights are exactly 0
        weights = torch.exp(centred)
        tail = weights.flip(-1).cumsum(-1).flip(-1)
        usable = tail > _safe_tail_floor(x.dtype)
        too_wide = (mask & ~usable).any(-1)
        # Masked and underflowed tails take 1: no log 0 or 1/0 reaches the loss or the backward pass.
        tail = torch.where(usable, tail, torch.ones_like(tail))
        ctx.save_for_backward(weights, tail, usable & mask, mask)
        ctx.mark_non_differentiable(too_wide)
        return torch.where(mask, torch.log(tail) - centred, torch.zeros_like(tail)).sum(-1), too_wide

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, None]:
        weights, tail, usable, mask = ctx.saved_tensors
        inverse_tails = torch.where(usable, tail.reciprocal(), torch.zeros_like(tail)).cumsum(-1)
        per_entry = torch.where(mask, weights * inverse_tails - 1.0, torch.zeros_like(tail))
        return grad.unsqueeze(-1) * per_entry, None


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
    scores, targets, mask = _prepare(scores, targets, mask, zero_masked=False)  # the fused path gates by mask
    order, m_sorted, _ = _best_first_order(targets, mask)
    s_sorted = _scale(scores, beta).gather(-1, order)
    loss, too_wide = _PlackettLuceSorted.apply(s_sorted, m_sorted)
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
    order, m, ties = _best_first_order(targets, mask)
    s = _scale(scores, beta).gather(-1, order)
    k = s.shape[-1]
    # Only pairs (i above j) inside the window can be compared: enumerate them once, [P] with P ≤ K(K−1)/2.
    upper_i, upper_j = torch.triu_indices(k, k, offset=1, device=s.device)
    if skip is not None:
        near = (upper_j - upper_i) <= skip
        upper_i, upper_j = upper_i[near], upper_j[near]
    # In best-first order with masked entries last, a pair (i above j) is compared iff j is valid and the two do
    # not tie. Without ties that is one broadcast against the list lengths; with ties, tie groups are compared.
    valid_j = upper_j[None, :] < m.sum(-1, keepdim=True)  # [B, P], no gradient
    if ties:
        y = targets.gather(-1, order)
        group = torch.cat([torch.zeros_like(y[:, :1]), (y[:, 1:] != y[:, :-1]).to(y.dtype)], -1).cumsum(-1)
        valid_j = valid_j & (group.index_select(-1, upper_i) != group.index_select(-1, upper_j))
    compare = valid_j
    if approx == "exact":
        # index_select, not s[:, idx]: its backward is an index_add, far faster than advanced indexing's on CPU.
        per_pair = softplus(s.index_select(-1, upper_j) - s.index_select(-1, upper_i))
        return (per_pair * compare.to(s.dtype)).sum(-1)
    # log(1 + Σ_{j∈W_i} e^{s_j − s_i}) = log(e^{s_i − c} + Σ_{j∈W_i} e^{s_j − c}) − (s_i − c) for any shift c.
    window = s.new_zeros(s.shape[0], k * k)
    window.index_copy_(-1, upper_i * k + upper_j, compare.to(s.dtype))
    window = window.view(-1, k, k)  # window[b, i, j] = 1 if j ∈ W_i
    has_window = window.sum(-1) > 0
    shift = s.detach().masked_fill(~m, float("-inf")).amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    weights = torch.exp(s - shift) * m.to(s.dtype)
    total = weights + torch.bmm(window, weights.unsqueeze(-1)).squeeze(-1)
    usable = total > _safe_tail_floor(s.dtype)
    # Unusable totals (masked items, underflow in too-wide lists) take 1: no log 0 reaches forward or backward.
    per_item = (torch.log(torch.where(usable, total, torch.ones_like(total))) - (s - shift)) * has_window.to(s.dtype)
    too_wide = (has_window & ~usable).any(-1)
    if bool(too_wide.any()):
        rows = too_wide.nonzero().squeeze(-1)
        diff = s[rows, None, :] - s[rows, :, None]  # diff[r, i, j] = s_j − s_i
        exact = softplus(torch.logsumexp(diff.masked_fill(window[rows] == 0, MASK_FILL), dim=-1))
        exact = exact * has_window[rows].to(s.dtype)
        per_item = per_item.index_put((rows,), exact)
    return per_item.sum(-1)
