"""KTO (pointwise, unpaired) loss oracles: hand values, a naive loop, invariants, gradcheck, bad input."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from mmpref.losses import get_loss, is_listwise, is_pointwise, kto, pointwise


def naive_kto(score, desirable, beta, z0, lam_d, lam_u):
    out = []
    for s, y in zip(score.tolist(), desirable.tolist(), strict=True):
        if y:
            out.append(lam_d - lam_d / (1 + math.exp(-beta * (s - z0))))
        else:
            out.append(lam_u - lam_u / (1 + math.exp(-beta * (z0 - s))))
    return torch.tensor(out, dtype=torch.float64)


def test_hand_values_and_naive_loop():
    assert kto(torch.tensor([0.0]), torch.tensor([1])).item() == pytest.approx(0.5)
    assert kto(torch.tensor([1.0]), torch.tensor([0]), beta=2.0).item() == pytest.approx(1 / (1 + math.exp(-2)))
    g = torch.Generator().manual_seed(0)
    score = torch.randn(50, generator=g, dtype=torch.float64)
    desirable = torch.rand(50, generator=g) > 0.5
    got = kto(score, desirable, beta=3.0, reference_point=0.2, lambda_desirable=1.3, lambda_undesirable=0.7)
    torch.testing.assert_close(got, naive_kto(score, desirable, 3.0, 0.2, 1.3, 0.7))


def test_invariants():
    score = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    liked = kto(score, torch.ones(4, dtype=torch.bool))
    disliked = kto(score, torch.zeros(4, dtype=torch.bool))
    assert (liked.diff() < 0).all() and (disliked.diff() > 0).all()  # a liked image wants a higher reward
    torch.testing.assert_close(liked + disliked, torch.ones(4))  # λ_D = λ_U = 1: the two branches are mirrors
    shifted = kto(score + 1.0, torch.tensor([1, 0, 1, 0]), reference_point=1.0)
    torch.testing.assert_close(shifted, kto(score, torch.tensor([1, 0, 1, 0])))  # only s - z0 matters
    assert kto(score.to(torch.bfloat16), torch.tensor([1, 0, 1, 0])).dtype == torch.float32


def test_gradcheck_float64():
    score = torch.randn(6, dtype=torch.float64, requires_grad=True)
    desirable = torch.tensor([1, 0, 1, 1, 0, 0])
    assert torch.autograd.gradcheck(lambda s: kto(s, desirable, beta=1.7, reference_point=0.3), (score,))


def test_bad_input_and_registry():
    with pytest.raises(ValueError, match="desirable must hold booleans or 0/1"):
        kto(torch.zeros(2), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        kto(torch.zeros(2), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="beta"):
        kto(torch.zeros(2), torch.tensor([1, 0]), beta=0.0)
    assert get_loss("kto") is kto and is_pointwise("kto") and not is_listwise("kto")
    assert not is_pointwise("bradley_terry")


def test_docstring_examples_run():
    result = doctest.testmod(pointwise)
    assert result.attempted > 0 and result.failed == 0
