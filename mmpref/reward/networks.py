"""Scoring networks: features ``[..., D]`` in, one scalar score ``[...]`` out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp_blocks(
    in_features: int,
    widths: Sequence[int],
    activation: type[nn.Module] = nn.ReLU,
    dropout: float = 0.0,
) -> list[nn.Module]:
    """``Linear → activation [→ Dropout]`` for each hidden width: the trunk every MLP of mmpref is built from.

    Returned as a list so callers can append a head and wrap it in one ``nn.Sequential`` (parameter names
    ``0.weight``, ``2.weight``, ... are the same as a hand-written ``Sequential``'s, so saved weights still load).
    """
    blocks: list[nn.Module] = []
    width = in_features
    for size in widths:
        blocks += [nn.Linear(width, size), activation()]
        if dropout > 0:
            blocks.append(nn.Dropout(dropout))
        width = size
    return blocks


class MLPScorer(nn.Module):
    """A multilayer perceptron mapping a feature vector to a scalar score.

    Args:
        in_features: size D of the input features.
        hidden: widths of the hidden layers; ``[]`` gives a linear scorer.
        dropout: dropout after each hidden activation (0 disables it).
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64,), dropout: float = 0.0):
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        width = hidden[-1] if hidden else in_features
        self.net = nn.Sequential(*mlp_blocks(in_features, hidden, nn.GELU, dropout), nn.Linear(width, 1))
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score features ``[..., D]`` → ``[...]``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"scorer expects {self.in_features} features but got shape {tuple(x.shape)}; "
                "set the scorer's in_features to the data's feature size"
            )
        return self.net(x).squeeze(-1)
