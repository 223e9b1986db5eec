"""Scoring networks: features ``[..., D]`` in, one scalar score ``[...]`` out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score features ``[..., D]`` → ``[...]``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"scorer expects {self.in_features} features but got shape {tuple(x.shape)}; "
                "set the scorer's in_features to the data's feature size"
            )
        return self.net(x).squeeze(-1)
