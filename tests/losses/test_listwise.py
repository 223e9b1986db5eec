"""Oracle tests for the listwise losses: naive per-list / per-permutation loops, masks, ties, gradcheck."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmpref.losses import bradley_terry, listnet, plackett_luce, ranklist


def _order_best_first(targets: list[float]) -> list[int]:
    # Python's sort is stable, so tied targets keep their list order (the documented tie rule).
    return sorted(range(len(targets)), key=lambda i: -targets[i])


def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def naive_plackett_luce(scores: list[float], targets: list[float], beta: float = 1.0) -> float:
    order = _order_best_first(targets)
    s = [beta * scores[i] for i in order]
    return sum(_logsumexp(s[i:]) - s[i] for i in range(len(s)))


def naive_listnet(scores: list[float], targets: list[float], beta: float = 1.0, temp: float = 1.0) -> float:
    zt = _logsumexp([t / temp for t in targets])
    zs = _logsumexp([beta * s for s in scores])
    return -sum(math.exp(t / temp - zt) * (beta * s - zs) for s, t in zip(scores, targets, strict=True))


def naive_ranklist(scores, targets, beta=1.0, skip=None, approx="lse") -> float:
    order = _order_best_first(targets)
    total = 0.0
    for pi, i in enumerate(order):
        window = [
            j
            for pj, j in enumerate(order)
            if pj > pi and (skip is None or pj - pi <= skip) and targets[j] < targets[i]
        ]
        if not window:
            continue
        if approx == "exact":
            total += sum(math.log1p(math.exp(beta * (scores[j] - scores[i]))) for j in window)
        else:
            total += math.log1p(sum(math.exp(beta * (scores[j] - scores[i])) for j in window))
    return total


def _random_lists(b=16, k=6, seed=0, ties=False):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, k, generator=gen, dtype=torch.float64) * 2
    if ties:
        targets = torch.randint(0, 3, (b, k), generator=gen).to(torch.float64)
    else:
        targets = torch.randn(b, k, generator=gen, dtype=torch.float64)
    return scores, targets


def _masked(b=16, k=6, seed=0):
    gen = torch.Generator().manual_seed(seed + 100)
    mask = torch.rand(b, k, generator=gen) > 0.3
    mask[:, :2] = True  # at least two valid entries per list
    return mask


def test_hand_computed_values():
    s = torch.tensor([[2.0, 1.0, 0.0]])
    y = torch.tensor([[3.0, 2.0, 1.0]])
    # PL: [log(e² + e + 1) − 2] + [log(e + 1) − 1] + 0 = 0.40761 + 0.31326
    assert plackett_luce(s, y).item() == pytest.approx(0.4076059 + 0.3132617, abs=1e-6)
    # ListNet with equal targets: −Σ (1/3) log softmax(s) = log(e² + e + 1) − 1
    assert listnet(s, torch.zeros(1, 3)).item() == pytest.approx(1.4076059, abs=1e-6)
    # RankList exact: softplus(−1) + softplus(−2) + softplus(−1)
    exact = 2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))
    assert ranklist(s, y, approx="exact").item() == pytest.approx(exact, abs=1e-6)
    assert ranklist(s, y).item() == pytest.approx(exact, abs=1e-6)  # the exact form is the default
    # RankList lse: log(1 + e^{−1} + e^{−2}) + log(1 + e^{−1})
    lse = math.log1p(math.exp(-1) + math.exp(-2)) + math.log1p(math.exp(-1))
    assert ranklist(s, y, approx="lse").item() == pytest.approx(lse, abs=1e-6)


def test_ranklist_lse_over_all_pairs_is_plackett_luce_without_ties():
    scores, targets = _random_lists(b=8, k=7, seed=11)
    torch.testing.assert_close(ranklist(scores, targets, approx="lse"), plackett_luce(scores, targets))
    # ...but not once the window is limited or targets tie.
    assert not torch.allclose(ranklist(scores, targets, approx="lse", skip=2), plackett_luce(scores, targets))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_equal_naive_loops(ties, masked):
    scores, targets = _random_lists(ties=ties, seed=int(ties) + 2 * int(masked))
    mask = _masked() if masked else torch.ones_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        keep = mask[row].nonzero().flatten().tolist()
        s = [scores[row, i].item() for i in keep]
        t = [targets[row, i].item() for i in keep]
        m = mask if masked else None
        assert plackett_luce(scores, targets, m, beta=1.5)[row].item() == pytest.approx(
            naive_plackett_luce(s, t, 1.5), rel=1e-10
        )
        assert listnet(scores, targets, m, beta=0.7, target_temperature=2.0)[row].item() == pytest.approx(
            naive_listnet(s, t, 0.7, 2.0), rel=1e-10
        )
        for skip in (None, 1, 2):
            for approx in ("lse", "exact"):
                got = ranklist(scores, targets, m, beta=1.2, skip=skip, approx=approx)[row].item()
                assert got == pytest.approx(naive_ranklist(s, t, 1.2, skip, approx), rel=1e-10, abs=1e-12)


def test_plackett_luce_is_a_distribution_over_permutations():
    # Σ over all K! orders of P(order) = Σ exp(−loss) must be 1: checks the normaliser term by term.
    scores = torch.tensor([[0.3, -1.2, 2.0, 0.5]], dtype=torch.float64)
    total = 0.0
    for perm in itertools.permutations(range(4)):
        targets = torch.zeros(1, 4, dtype=torch.float64)
        for rank, item in enumerate(perm):
            targets[0, item] = 4 - rank
        total += math.exp(-plackett_luce(scores, targets).item())
    assert total == pytest.approx(1.0, rel=1e-12)


def test_two_item_lists_reduce_to_bradley_terry():
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(32, 2, generator=gen)
    y = torch.tensor([[1.0, 0.0]]).expand(32, 2)
    bt = bradley_terry(s[:, 0], s[:, 1], beta=2.0)
    torch.testing.assert_close(plackett_luce(s, y, beta=2.0), bt)
    torch.testing.assert_close(ranklist(s, y, beta=2.0, approx="lse"), bt)
    torch.testing.assert_close(ranklist(s, y, beta=2.0, approx="exact"), bt)
    # ListNet on a 2-list with a hard target is BT in the limit of a cold target distribution.
    torch.testing.assert_close(listnet(s, y, beta=2.0, target_temperature=1e-3), bt)


def test_ranklist_skip_one_is_adjacent_ranknet_and_lse_is_sandwiched():
    scores, targets = _random_lists(b=8, k=5, seed=6)
    order = torch.argsort(targets, dim=-1, descending=True)
    s_sorted = scores.gather(-1, order)
    adjacent = bradley_terry(s_sorted[:, :-1], s_sorted[:, 1:]).sum(-1)
    torch.testing.assert_close(ranklist(scores, targets, skip=1, approx="lse"), adjacent)
    torch.testing.assert_close(ranklist(scores, targets, skip=1, approx="exact"), adjacent)
    lse = ranklist(scores, targets, approx="lse")
    exact = ranklist(scores, targets, approx="exact")
    assert (lse <= exact + 1e-12).all()
    assert (lse > 0).all()


def test_masked_entries_get_no_loss_and_no_gradient():
    scores, targets = _random_lists(seed=7)
    mask = _masked(seed=7)
    # Garbage (NaN, huge) in masked slots must change nothing.
    dirty_scores = scores.clone().masked_fill(~mask, float("nan"))
    dirty_targets = targets.clone().masked_fill(~mask, 1e9)
    for fn in (plackett_luce, listnet, ranklist):
        clean = fn(scores.masked_fill(~mask, 0.0), targets, mask)
        x = dirty_scores.clone().requires_grad_()
        dirty = fn(x, dirty_targets, mask)
        torch.testing.assert_close(dirty, clean)
        dirty.sum().backward()
        assert torch.isfinite(x.grad).all()
        assert (x.grad[~mask] == 0).all()
    # Lists with fewer than two valid entries cost nothing.
    one = torch.tensor([[True, False, False]])
    for fn in (plackett_luce, listnet, ranklist):
        assert fn(torch.randn(1, 3), torch.randn(1, 3), one).item() == 0.0


def test_invariance_to_list_order_and_to_reordering_ties():
    scores, targets = _random_lists(b=4, k=6, seed=8)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    for fn in (plackett_luce, listnet, ranklist):  # distinct targets: any joint permutation is harmless
        torch.testing.assert_close(fn(scores[:, perm], targets[:, perm]), fn(scores, targets))
    tied = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    s = torch.tensor([[0.1, 0.9, -0.4, 0.3, 1.2, -2.0]])
    swap = torch.tensor([0, 3, 1, 2, 5, 4])  # reorders items only within tie groups
    torch.testing.assert_close(listnet(s[:, swap], tied), listnet(s, tied))
    torch.testing.assert_close(ranklist(s[:, swap], tied), ranklist(s, tied))
    torch.testing.assert_close(ranklist(s[:, swap], tied, approx="lse"), ranklist(s, tied, approx="lse"))


@pytest.mark.parametrize("fn", [plackett_luce, listnet, ranklist], ids=lambda f: f.__name__)
def test_gradcheck_float64(fn):
    scores, targets = _random_lists(b=3, k=5, seed=9)
    mask = _masked(b=3, k=5, seed=9)
    x = scores.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: fn(s, targets, mask, beta=0.8), (x,))


@pytest.mark.parametrize("fn", [plackett_luce, listnet, ranklist], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_scores_give_finite_loss_and_gradient(fn, dtype):
    scores = torch.tensor([[-5e3, 5e3, 0.0, 1.0]], dtype=dtype, requires_grad=True)
    targets = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=dtype)
    loss = fn(scores, targets)
    assert torch.isfinite(loss).all() and loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.dtype == dtype
    assert loss.item() > 5e3  # the best item is scored 1e4 below the second: a large, finite loss


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"scores has shape \(2, 3\) but targets has shape \(2, 4\)"):
        plackett_luce(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"must be \[B, K\]"):
        listnet(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="skip"):
        ranklist(torch.zeros(1, 3), torch.zeros(1, 3), skip=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fn", [plackett_luce, listnet, ranklist], ids=lambda f: f.__name__)
def test_cuda_matches_cpu(fn):
    scores, targets = _random_lists(b=32, k=8, seed=10)
    mask = _masked(b=32, k=8, seed=10)
    got = fn(scores.float().cuda(), targets.float().cuda(), mask.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), fn(scores.float(), targets.float(), mask))


@pytest.mark.parametrize(
    "fn", [plackett_luce, lambda s, t, m: ranklist(s, t, m, approx="lse")], ids=["plackett_luce", "ranklist_lse"]
)
def test_fast_and_wide_list_paths_agree_with_the_oracle_in_one_batch(fn):
    # Rows 0-1 are narrow (shifted-exp fast path); rows 2-3 spread over 300 (exact log-sum-exp path in float32).
    scores = torch.tensor(
        [[0.5, -1.0, 2.0, 0.1], [1.0, 1.5, -0.5, 0.0], [150.0, -150.0, 3.0, 0.0], [-100.0, 200.0, 0.0, 5.0]],
        dtype=torch.float64,
    )
    targets = torch.tensor([[4.0, 3.0, 2.0, 1.0]]).expand(4, 4).to(torch.float64)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]] * 2)
    naive = naive_plackett_luce if fn is plackett_luce else (lambda s, t: naive_ranklist(s, t, approx="lse"))
    want = [
        naive(
            [scores[r, i].item() for i in range(4) if mask[r, i]],
            [targets[r, i].item() for i in range(4) if mask[r, i]],
        )
        for r in range(4)
    ]
    x32 = scores.float().requires_grad_()
    got = fn(x32, targets.float(), mask)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    # Gradients of the float32 mixed-path batch match float64 autograd of the same function.
    got.sum().backward()
    x64 = scores.clone().requires_grad_()
    fn(x64, targets, mask).sum().backward()
    torch.testing.assert_close(x32.grad, x64.grad.float(), rtol=1e-5, atol=1e-5)
    assert (x32.grad[~mask] == 0).all()


def test_fused_plackett_luce_matches_its_reference_forward_and_backward():
    from mmpref.losses.listwise import _plackett_luce_sorted_reference, _PlackettLuceSorted

    gen = torch.Generator().manual_seed(12)
    for dtype in (torch.float32, torch.float64):
        x = (torch.randn(64, 9, generator=gen) * 4).to(dtype)
        mask = torch.rand(64, 9, generator=gen) > 0.25
        mask = mask.sort(dim=-1, descending=True, stable=True).values  # sorted lists keep masked entries last
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        fused, too_wide = _PlackettLuceSorted.apply(a, mask)
        reference = _plackett_luce_sorted_reference(b, mask)
        assert not too_wide.any()
        torch.testing.assert_close(fused, reference)
        weights = torch.rand(64, generator=gen).to(dtype)  # a non-uniform upstream gradient
        (fused * weights).sum().backward()
        (reference * weights).sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
