"""The shared loss core: pure functions from scores to unreduced preference losses.

Pairwise losses take ``(score_w, score_l, *, beta, **kwargs)`` on ``[B]`` scores; listwise losses take
``(scores, targets, mask=None, *, beta, **kwargs)`` on ``[B, K]``; pointwise (unpaired) losses take
``(score, desirable, *, beta, **kwargs)`` on ``[B]``. Systems pick a loss by name through the
registries below (one explicit dict per kind, with a ``Literal`` of the names kept equal to it by a test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from mmpref.losses.gaussian import gaussian_bradley_terry, gaussian_kl_standard, gaussian_segment_return
from mmpref.losses.listwise import listnet, plackett_luce, ranklist
from mmpref.losses.pairwise import (
    bradley_terry,
    hinge,
    ipo,
    margin_bradley_terry,
    robust,
    soft_bradley_terry,
    soft_pairwise,
)
from mmpref.losses.pointwise import kto

PairwiseLossName = Literal["bradley_terry", "hinge", "ipo", "robust", "margin"]
ListwiseLossName = Literal["listnet", "plackett_luce", "ranklist"]
LossName = Literal[PairwiseLossName, ListwiseLossName]  # paired or ranked comparisons, what most systems take
PointwiseLossName = Literal["kto"]  # unpaired likes/dislikes: only systems that say so accept these

PAIRWISE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bradley_terry": bradley_terry,
    "hinge": hinge,
    "ipo": ipo,
    "robust": robust,
    "margin": margin_bradley_terry,
}
LISTWISE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "listnet": listnet,
    "plackett_luce": plackett_luce,
    "ranklist": ranklist,
}
POINTWISE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "kto": kto,
}


def is_listwise(name: str) -> bool:
    """Whether a registered loss name is listwise (else pairwise); raises ``ValueError`` for unknown names."""
    get_loss(name)
    return name in LISTWISE_LOSSES


def is_pointwise(name: str) -> bool:
    """Whether a registered loss name is pointwise (unpaired likes/dislikes); ``ValueError`` for unknown ones."""
    get_loss(name)
    return name in POINTWISE_LOSSES


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """Look up a pairwise or listwise loss by its registry name.

    Raises:
        ValueError: for an unknown name, listing every valid one.
    """
    if name in PAIRWISE_LOSSES:
        return PAIRWISE_LOSSES[name]
    if name in LISTWISE_LOSSES:
        return LISTWISE_LOSSES[name]
    if name in POINTWISE_LOSSES:
        return POINTWISE_LOSSES[name]
    raise ValueError(
        f"unknown loss {name!r}; valid pairwise losses: {', '.join(get_args(PairwiseLossName))}; "
        f"valid listwise losses: {', '.join(get_args(ListwiseLossName))}; "
        f"valid pointwise losses: {', '.join(get_args(PointwiseLossName))}"
    )


__all__ = [
    "LISTWISE_LOSSES",
    "PAIRWISE_LOSSES",
    "POINTWISE_LOSSES",
    "ListwiseLossName",
    "LossName",
    "PairwiseLossName",
    "PointwiseLossName",
    "bradley_terry",
    "gaussian_bradley_terry",
    "gaussian_kl_standard",
    "gaussian_segment_return",
    "get_loss",
    "hinge",
    "ipo",
    "is_listwise",
    "is_pointwise",
    "kto",
    "listnet",
    "margin_bradley_terry",
    "plackett_luce",
    "ranklist",
    "robust",
    "soft_bradley_terry",
    "soft_pairwise",
]
