"""Scripted teachers: the B-Pref simulated human with all its parameters, a ratings teacher, a budget accountant.

B-Pref (Lee et al. 2021, "B-Pref: Benchmarking Preference-Based Reinforcement Learning", §4.2) labels a segment pair
from the true rewards, in this order:

1. *skip*: if both segments' (undiscounted) returns are below ``skip_threshold``, no label is given (the query still
   costs budget);
2. *myopia*: step t of an H-step segment is weighted γ^(H−1−t), so with γ < 1 the end of a segment counts most;
3. *rationality*: with β = ∞ the segment with the larger weighted return is preferred (a exact tie → a); with a
   finite β the label is drawn from P(a ≻ b) = σ(β(R_a − R_b)) (Bradley-Terry);
4. *mistake*: the label is flipped with probability ε;
5. *equal*: if the (undiscounted) returns differ by less than ``equal_threshold``, the label is 0.5 (equally
   preferable), whatever steps 3-4 gave.

Labels are P(a ≻ b) ∈ {0, 0.5, 1}; ``None`` marks a skipped query. All randomness comes from the teacher's own
seeded generator. The teacher records, for every label it gives, whether step 4 flipped it (``mistakes``), so that
a noise-robust learner (RIME) can be scored on which corrupted labels it caught; the learner never reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mmpref.data import Segment, SegmentPair


@dataclass
class Budget:
    """Counts queries asked vs labels obtained (skips cost a query and give no label; ties are labels)."""

    limit: int | None = None
    asked: int = 0
    labelled: int = 0
    skipped: int = 0
    equal: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"a label budget must be >= 1 query (or None for unlimited), got {self.limit}")

    @property
    def remaining(self) -> int | float:
        """Queries left (``inf`` without a limit)."""
        return math.inf if self.limit is None else max(0, self.limit - self.asked)


@dataclass
class ScriptedTeacher:
    """The B-Pref scripted teacher.

    Args:
        beta: rationality β (``math.inf``: always the better segment; finite: Bradley-Terry sampling).
        gamma: myopia γ ∈ (0, 1]: step t of H is weighted γ^(H−1−t).
        eps: mistake probability ε ∈ [0, 1].
        skip_threshold: skip the query when both returns are below it (``-inf``: never skip).
        equal_threshold: label 0.5 when |R_a − R_b| is below it (0: never).
        seed: seed of the teacher's generator.
        budget: the query budget and its counters.

    Attributes:
        mistakes: one entry per label given (skipped queries give none), in order: True when the ε mistake flipped
            it (and no "equal" 0.5 overrode it). Ground truth for diagnostics only.
    """

    beta: float = math.inf
    gamma: float = 1.0
    eps: float = 0.0
    skip_threshold: float = -math.inf
    equal_threshold: float = 0.0
    seed: int = 0
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (math.inf for a perfectly rational teacher), got {self.beta}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps must lie in [0, 1], got {self.eps}")
        if self.equal_threshold < 0:
            raise ValueError(f"equal_threshold must be >= 0, got {self.equal_threshold}")
        self.rng = np.random.default_rng(self.seed)
        self.mistakes: list[bool] = []

    @classmethod
    def with_relative_thresholds(
        cls, mean_segment_return: float, skip_fraction: float = 0.0, equal_fraction: float = 0.0, **kwargs: object
    ) -> ScriptedTeacher:
        """B-Pref's setting: thresholds as fractions of the mean segment return (``skip_fraction=0`` = no skip)."""
        skip = skip_fraction * mean_segment_return if skip_fraction > 0 else -math.inf
        return cls(skip_threshold=skip, equal_threshold=equal_fraction * abs(mean_segment_return), **kwargs)

    def weighted_return(self, rewards: np.ndarray) -> float:
        """Σ_t γ^(H−1−t) r_t."""
        rewards = np.asarray(rewards, np.float64)
        return float((self.gamma ** np.arange(len(rewards) - 1, -1, -1) * rewards).sum())

    def label(self, a: Segment, b: Segment) -> float | None:
        """P(a ≻ b) ∈ {0, 0.5, 1}, or ``None`` when skipped; counts the query against the budget."""
        if a.rewards is None or b.rewards is None:
            raise ValueError("a scripted teacher needs segments with their true rewards")
        if self.budget.remaining <= 0:
            raise RuntimeError(f"label budget of {self.budget.limit} queries is spent")
        self.budget.asked += 1
        return_a, return_b = float(np.sum(a.rewards)), float(np.sum(b.rewards))
        if max(return_a, return_b) < self.skip_threshold:
            self.budget.skipped += 1
            return None
        weighted_a, weighted_b = self.weighted_return(a.rewards), self.weighted_return(b.rewards)
        if math.isinf(self.beta):
            label = 1.0 if weighted_a >= weighted_b else 0.0
        else:
            p = 0.5 * (1.0 + math.tanh(0.5 * self.beta * (weighted_a - weighted_b)))
            label = float(self.rng.random() < p)
        mistake = self.rng.random() < self.eps
        if mistake:
            label = 1.0 - label
        if abs(return_a - return_b) < self.equal_threshold:
            label, mistake = 0.5, False
            self.budget.equal += 1
        self.budget.labelled += 1
        self.mistakes.append(bool(mistake))
        return label

    def label_pairs(self, pairs: Sequence[SegmentPair]) -> list[SegmentPair]:
        """Label pairs; skipped queries are dropped from the result (but counted in the budget)."""
        out = []
        for pair in pairs:
            label = self.label(pair.a, pair.b)
            if label is not None:
                out.append(SegmentPair(id=pair.id, a=pair.a, b=pair.b, label=label, teacher="scripted"))
        return out


@dataclass
class RatingTeacher:
    """Absolute ratings 1..levels of segments (or whole trajectories) from their true return.

    Args:
        edges: ``levels − 1`` increasing return thresholds; a return below ``edges[0]`` rates 1.
        noise: standard deviation of Gaussian noise added to the return before rating.
        seed: seed of the noise.
    """

    edges: Sequence[float]
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if list(self.edges) != sorted(self.edges):
            raise ValueError(f"rating edges must increase, got {list(self.edges)}")
        self.rng = np.random.default_rng(self.seed)

    @classmethod
    def from_returns(cls, returns: Sequence[float], levels: int = 5, **kwargs: object) -> RatingTeacher:
        """Edges at the quantiles of example returns, so ratings spread evenly over ``levels``."""
        return cls(edges=list(np.quantile(returns, np.linspace(0, 1, levels + 1)[1:-1])), **kwargs)

    def rate(self, rewards: np.ndarray) -> int:
        """The rating of one segment or trajectory."""
        total = float(np.sum(rewards)) + (self.noise * self.rng.standard_normal() if self.noise > 0 else 0.0)
        return int(1 + np.searchsorted(self.edges, total, side="right"))
