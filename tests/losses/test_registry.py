from __future__ import annotations

import doctest
from typing import get_args

import pytest

import mmpref.losses as losses
from mmpref.losses import listwise, pairwise


def test_literal_names_equal_registry_keys():
    assert set(get_args(losses.PairwiseLossName)) == set(losses.PAIRWISE_LOSSES)
    assert set(get_args(losses.ListwiseLossName)) == set(losses.LISTWISE_LOSSES)
    assert not set(losses.PAIRWISE_LOSSES) & set(losses.LISTWISE_LOSSES)
    assert set(get_args(losses.PointwiseLossName)) == set(losses.POINTWISE_LOSSES)
    assert not set(losses.POINTWISE_LOSSES) & (set(losses.PAIRWISE_LOSSES) | set(losses.LISTWISE_LOSSES))


def test_get_loss_finds_every_name_and_explains_unknown_ones():
    for name, fn in {**losses.PAIRWISE_LOSSES, **losses.LISTWISE_LOSSES}.items():
        assert losses.get_loss(name) is fn
    with pytest.raises(ValueError, match="unknown loss 'bt'.*bradley_terry.*plackett_luce"):
        losses.get_loss("bt")
    assert losses.is_listwise("ranklist") and not losses.is_listwise("hinge")


def test_issue_names_are_public():
    for name in (
        "bradley_terry",
        "hinge",
        "ipo",
        "robust",
        "soft_bradley_terry",
        "margin_bradley_terry",
        "listnet",
        "plackett_luce",
        "ranklist",
        "get_loss",
    ):
        assert hasattr(losses, name)


@pytest.mark.parametrize("module", [pairwise, listwise], ids=["pairwise", "listwise"])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
