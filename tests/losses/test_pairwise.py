"""Oracle tests for the pairwise losses: hand values, naive per-pair loops in plain Python, invariants, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from mmpref.losses import (
    bradley_terry,
    hinge,
    ipo,
    margin_bradley_terry,
    robust,
    soft_bradley_terry,
    soft_pairwise,
)


def _log_sigmoid(x: float) -> float:
    # Written from the definition log σ(x) = −log(1 + e^{−x}), stable on both sides.
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# Per-pair oracles written directly from the equations in the issue / papers.md, in plain Python floats.
ORACLES = {
    "bradley_terry": lambda w, lo, beta: -_log_sigmoid(beta * (w - lo)),
    "hinge": lambda w, lo, beta: max(0.0, 1.0 - beta * (w - lo)),
    "ipo": lambda w, lo, beta: ((w - lo) - 1.0 / (2.0 * beta)) ** 2,
    "robust": lambda w, lo, beta: -(1 - 0.1) * _log_sigmoid(beta * (w - lo)) - 0.1 * _log_sigmoid(-beta * (w - lo)),
    "margin": lambda w, lo, beta: -_log_sigmoid(beta * (w - lo) - 0.3),
}
FUNCTIONS = {
    "bradley_terry": lambda w, lo, beta: bradley_terry(w, lo, beta=beta),
    "hinge": lambda w, lo, beta: hinge(w, lo, beta=beta),
    "ipo": lambda w, lo, beta: ipo(w, lo, beta=beta),
    "robust": lambda w, lo, beta: robust(w, lo, beta=beta, eps=0.1),
    "margin": lambda w, lo, beta: margin_bradley_terry(w, lo, margin=0.3, beta=beta),
}


def test_hand_computed_values():
    w, lo = torch.tensor([2.0]), torch.tensor([1.0])
    # −log σ(1) = log(1 + e^{−1}) = 0.31326...
    assert bradley_terry(w, lo).item() == pytest.approx(0.3132617, abs=1e-6)
    # β = 2: −log σ(2) = 0.126928...
    assert bradley_terry(w, lo, beta=2.0).item() == pytest.approx(0.1269280, abs=1e-6)
    assert hinge(w, lo, beta=0.5).item() == pytest.approx(0.5)
    assert hinge(w, lo, beta=2.0).item() == 0.0
    # (1 − 1/(2·0.25))² = (1 − 2)² = 1
    assert ipo(w, lo, beta=0.25).item() == pytest.approx(1.0)
    # 0.8·0.31326 + 0.2·1.31326 = 0.51326
    assert robust(w, lo, eps=0.2).item() == pytest.approx(0.5132617, abs=1e-6)
    # −log σ(1 − 1) = log 2
    assert margin_bradley_terry(w, lo, margin=1.0).item() == pytest.approx(math.log(2))
    # p = 0.25: 0.25·0.31326 + 0.75·1.31326 = 1.06326
    assert soft_bradley_terry(w, lo, 0.25).item() == pytest.approx(1.0632617, abs=1e-6)


@pytest.mark.parametrize("name", sorted(ORACLES))
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_equals_naive_per_pair_loop(name, beta):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=gen, dtype=torch.float64) * 3
    lo = torch.randn(64, generator=gen, dtype=torch.float64) * 3
    got = FUNCTIONS[name](w, lo, beta)
    want = torch.tensor(
        [ORACLES[name](a, b, beta) for a, b in zip(w.tolist(), lo.tolist(), strict=True)], dtype=torch.float64
    )
    assert got.shape == w.shape
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-10, atol=1e-12)


def test_swap_flips_the_margin_and_ties_give_log2():
    w = torch.tensor([3.0, -1.0, 0.5])
    lo = torch.tensor([1.0, 2.0, 0.5])
    # Swapping winner and loser turns −log σ(Δ) into −log σ(−Δ) = −log σ(Δ) + Δ.
    torch.testing.assert_close(bradley_terry(lo, w), bradley_terry(w, lo) + (w - lo))
    tie = torch.zeros(5)
    torch.testing.assert_close(bradley_terry(tie, tie), torch.full((5,), math.log(2)))
    torch.testing.assert_close(robust(tie, tie, eps=0.3), torch.full((5,), math.log(2)))
    torch.testing.assert_close(soft_bradley_terry(w, lo, 0.5), soft_bradley_terry(lo, w, 0.5))


def test_soft_label_forms_agree():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    p = torch.rand(32, generator=gen)
    torch.testing.assert_close(soft_pairwise(bradley_terry, a, b, p, beta=2.0), soft_bradley_terry(a, b, p, beta=2.0))
    # Hard labels reduce to the plain loss in the labelled direction.
    torch.testing.assert_close(soft_bradley_terry(a, b, 1.0), bradley_terry(a, b))
    torch.testing.assert_close(soft_bradley_terry(a, b, 0.0), bradley_terry(b, a))
    torch.testing.assert_close(soft_pairwise(hinge, a, b, torch.ones(32)), hinge(a, b))
    # The soft BT loss is minimised where σ(Δ) equals the label.
    x = torch.zeros(1, requires_grad=True)
    soft_bradley_terry(x, torch.zeros(1), 0.8).sum().backward()
    assert x.grad.item() == pytest.approx(-(0.8 - 0.5))


def test_special_cases_reduce_to_bradley_terry():
    gen = torch.Generator().manual_seed(2)
    w, lo = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    torch.testing.assert_close(robust(w, lo, eps=0.0), bradley_terry(w, lo))
    torch.testing.assert_close(margin_bradley_terry(w, lo, margin=0.0), bradley_terry(w, lo))
    per_pair_margin = torch.linspace(0, 1, 16)
    want = torch.stack(
        [margin_bradley_terry(w[i : i + 1], lo[i : i + 1], margin=float(m)) for i, m in enumerate(per_pair_margin)]
    ).squeeze(-1)
    torch.testing.assert_close(margin_bradley_terry(w, lo, margin=per_pair_margin), want)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_gradcheck_float64(name):
    gen = torch.Generator().manual_seed(3)
    # Avoid the hinge's kink at βΔ = 1, where the derivative is not defined.
    w = (torch.randn(8, generator=gen, dtype=torch.float64) + 3).requires_grad_()
    lo = torch.randn(8, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: FUNCTIONS[name](a, b, 0.7), (w, lo))
    p = torch.rand(8, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, q: soft_bradley_terry(a, b, q, beta=1.3), (w, lo, p))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_scores_give_finite_loss_and_gradient(name, dtype):
    # |Δ| = 1e4 in both directions.
    w = torch.tensor([5e3, -5e3, 0.0], dtype=dtype, requires_grad=True)
    lo = torch.tensor([-5e3, 5e3, 0.0], dtype=dtype, requires_grad=True)
    loss = FUNCTIONS[name](w, lo, 1.0)
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(lo.grad).all()
    assert w.grad.dtype == dtype
    # Losses of half inputs come back in float32; the wrong order costs about |Δ| for the BT family.
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if name in ("bradley_terry", "margin"):
        assert loss[1].item() == pytest.approx(1e4, rel=1e-2)  # bfloat16 stores 5e3 as 4992
    if name == "robust":  # (1 − ε)·1e4 + ε·0 with ε = 0.1
        assert loss[1].item() == pytest.approx(9e3, rel=1e-2)


def test_device_and_dtype_follow_inputs():
    w64 = torch.randn(4, dtype=torch.float64)
    assert bradley_terry(w64, w64).dtype == torch.float64
    assert bradley_terry(w64, w64).device == w64.device
    with pytest.raises(ValueError, match=r"score_w has shape \(4,\) but score_l has shape \(3,\)"):
        bradley_terry(torch.zeros(4), torch.zeros(3))
    with pytest.raises(TypeError, match="floating point"):
        bradley_terry(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        robust(torch.zeros(2), torch.zeros(2), eps=0.5)
    with pytest.raises(ValueError, match="beta must be > 0"):
        ipo(torch.zeros(2), torch.zeros(2), beta=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_cuda_matches_cpu(name):
    gen = torch.Generator().manual_seed(4)
    w, lo = torch.randn(128, generator=gen), torch.randn(128, generator=gen)
    got = FUNCTIONS[name](w.cuda(), lo.cuda(), 1.5)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), FUNCTIONS[name](w, lo, 1.5))
