"""Typed, frozen preference records, validated on construction.

An *item* is what a person judged: a path to an image or video (``str``), encoded image bytes, or a feature vector
(``numpy`` array). Records never load items; readers check that files exist and decode.

Labels follow one convention everywhere: ``label`` is the probability that ``a`` is preferred over ``b`` (1 = a
wins, 0 = b wins, 0.5 = tie), and list ``scores`` are higher-is-better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmpref.errors import MmprefError

Item = str | bytes | np.ndarray


class RecordError(MmprefError):
    """A record that breaks a rule: the message names the field, the bad value and the fix."""


def _check_id(record_id: str) -> None:
    if not isinstance(record_id, str) or not record_id:
        raise RecordError(f"field 'id' must be a non-empty string, got {record_id!r}; give every record a unique id")


def _check_item(name: str, item: object) -> None:
    if isinstance(item, str):
        if not item:
            raise RecordError(f"field '{name}' is an empty string; give a path or an item id")
    elif isinstance(item, bytes):
        if not item:
            raise RecordError(f"field '{name}' holds zero bytes; give encoded image bytes or a path")
    elif isinstance(item, np.ndarray):
        if not np.isfinite(item).all():
            raise RecordError(f"field '{name}' holds NaN or inf features; clean the features before building pairs")
    else:
        raise RecordError(
            f"field '{name}' must be a path (str), image bytes or a numpy array, got {type(item).__name__}"
        )


def _check_probability(name: str, value: object) -> float:
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RecordError(f"field '{name}' must be a number in [0, 1], got {value!r}") from None
    if math.isnan(value):
        raise RecordError(f"field '{name}' is NaN; use a probability in [0, 1] (0.5 for a tie) or drop the row")
    if not 0.0 <= value <= 1.0:
        raise RecordError(
            f"field '{name}' = {value} is outside [0, 1]; it is P(a preferred over b): 1 = a wins, 0 = b wins, "
            "0.5 = tie"
        )
    return value


def _check_finite(name: str, value: object) -> float:
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RecordError(f"field '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise RecordError(f"field '{name}' is {value}; give a finite number or drop the row")
    return value


@dataclass(frozen=True)
class PreferencePair:
    """One comparison of two items.

    Attributes:
        id: unique id of the record.
        a: the first item (path, bytes or features ``[D]``).
        b: the second item, same kind as ``a``.
        label: P(a ≻ b) in [0, 1]; 0.5 is a tie.
        prompt: the text the items answer (a caption), if any.
        user_id: who judged, for personal models; ``None`` for pooled labels.
        meta: anything else, kept as is.
    """

    id: str
    a: Item
    b: Item
    label: float = 1.0
    prompt: str | None = None
    user_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_item("a", self.a)
        _check_item("b", self.b)
        if isinstance(self.a, np.ndarray) and isinstance(self.b, np.ndarray) and self.a.shape != self.b.shape:
            raise RecordError(
                f"fields 'a' and 'b' have feature shapes {self.a.shape} and {self.b.shape}; they must match"
            )
        object.__setattr__(self, "label", _check_probability("label", self.label))

    @property
    def is_tie(self) -> bool:
        """Whether neither item is preferred (label 0.5)."""
        return self.label == 0.5

    @property
    def winner(self) -> Item:
        """The preferred item; raises for a tie."""
        if self.is_tie:
            raise RecordError(f"pair {self.id!r} is a tie and has no winner")
        return self.a if self.label > 0.5 else self.b

    @property
    def loser(self) -> Item:
        """The rejected item; raises for a tie."""
        if self.is_tie:
            raise RecordError(f"pair {self.id!r} is a tie and has no loser")
        return self.b if self.label > 0.5 else self.a


@dataclass(frozen=True)
class PreferenceList:
    """A ranked list of K ≥ 2 items.

    Attributes:
        id: unique id of the record.
        items: the K items.
        scores: K numbers, higher = better (a rating, a utility, or K − rank); equal numbers are ties.
        prompt: the shared text, if any.
        user_id: who ranked, if known.
        meta: anything else.
    """

    id: str
    items: tuple[Item, ...]
    scores: tuple[float, ...]
    prompt: str | None = None
    user_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_id(self.id)
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "scores", tuple(_check_finite("scores", s) for s in self.scores))
        if len(self.items) < 2:
            raise RecordError(f"field 'items' has {len(self.items)} entries; a ranked list needs at least 2")
        if len(self.items) != len(self.scores):
            raise RecordError(
                f"field 'items' has {len(self.items)} entries but 'scores' has {len(self.scores)}; give one score "
                "per item"
            )
        for i, item in enumerate(self.items):
            _check_item(f"items[{i}]", item)

    @classmethod
    def from_ranking(cls, id: str, items_best_first: list[Item], **kwargs: Any) -> PreferenceList:
        """Build a list from items ordered best first (scores K−1, ..., 0)."""
        k = len(items_best_first)
        return cls(id=id, items=tuple(items_best_first), scores=tuple(float(k - 1 - i) for i in range(k)), **kwargs)


@dataclass(frozen=True)
class Rating:
    """An absolute judgement of one item on a scale.

    Attributes:
        id: unique id of the record.
        item: the rated item.
        rating: the score given, inside ``scale``.
        scale: (low, high) ends of the rating scale, e.g. (1, 5).
        prompt: the text the item answers, if any.
        user_id: who rated, if known.
        meta: anything else.
    """

    id: str
    item: Item
    rating: float
    scale: tuple[float, float] = (1.0, 5.0)
    prompt: str | None = None
    user_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_item("item", self.item)
        low, high = (_check_finite("scale", v) for v in self.scale)
        if not low < high:
            raise RecordError(f"field 'scale' = {self.scale} must be (low, high) with low < high")
        rating = _check_finite("rating", self.rating)
        if not low <= rating <= high:
            raise RecordError(
                f"field 'rating' = {rating} is outside the scale [{low}, {high}]; fix the value or 'scale'"
            )
        object.__setattr__(self, "rating", rating)
        object.__setattr__(self, "scale", (low, high))

    @property
    def normalized(self) -> float:
        """The rating mapped to [0, 1]."""
        low, high = self.scale
        return (self.rating - low) / (high - low)


@dataclass(frozen=True)
class Segment:
    """A piece of a trajectory: T consecutive steps.

    Attributes:
        id: unique id of the segment.
        observations: ``[T, obs_dim]`` float array.
        actions: ``[T, act_dim]`` float array.
        rewards: ``[T]`` true rewards, if known (scripted teachers need them; human-labelled data may not have them).
        source: where it came from (task name, episode id...).
        start: index of the first step inside its episode.
    """

    id: str
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray | None = None
    source: str = ""
    start: int = 0

    def __post_init__(self) -> None:
        _check_id(self.id)
        obs, act = np.asarray(self.observations), np.asarray(self.actions)
        if obs.ndim != 2 or act.ndim != 2:
            raise RecordError(
                f"segment {self.id!r}: 'observations' must be [T, obs_dim] and 'actions' [T, act_dim], got shapes "
                f"{obs.shape} and {act.shape}"
            )
        if obs.shape[0] != act.shape[0] or obs.shape[0] == 0:
            raise RecordError(
                f"segment {self.id!r}: 'observations' {obs.shape} and 'actions' {act.shape} must have the same "
                "number T ≥ 1 of steps"
            )
        if self.rewards is not None:
            rew = np.asarray(self.rewards)
            if rew.shape != (obs.shape[0],):
                raise RecordError(f"segment {self.id!r}: 'rewards' has shape {rew.shape}, expected ({obs.shape[0]},)")
            object.__setattr__(self, "rewards", rew)
        for name, array in (("observations", obs), ("actions", act)):
            if not np.isfinite(array).all():
                raise RecordError(f"segment {self.id!r}: field '{name}' holds NaN or inf")
        object.__setattr__(self, "observations", obs)
        object.__setattr__(self, "actions", act)

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    def discounted_return(self, gamma: float = 1.0) -> float:
        """Σ_t γ^(T−1−t) r_t: the return with the B-Pref myopic weighting (γ = 1 is the plain sum)."""
        if self.rewards is None:
            raise RecordError(f"segment {self.id!r} has no rewards; a return needs them")
        weights = gamma ** np.arange(len(self) - 1, -1, -1, dtype=np.float64)
        return float((weights * self.rewards).sum())


@dataclass(frozen=True)
class SegmentPair:
    """Two segments of equal length and a label P(a ≻ b).

    Attributes:
        id: unique id of the record.
        a: the first segment.
        b: the second segment.
        label: P(a ≻ b) in [0, 1]; 0.5 is "equally preferable".
        teacher: which teacher gave the label (e.g. ``"scripted"``, an annotator id).
    """

    id: str
    a: Segment
    b: Segment
    label: float = 1.0
    teacher: str = ""

    def __post_init__(self) -> None:
        _check_id(self.id)
        if not isinstance(self.a, Segment) or not isinstance(self.b, Segment):
            raise RecordError("fields 'a' and 'b' must be Segment records")
        if len(self.a) != len(self.b):
            raise RecordError(
                f"pair {self.id!r}: segments have {len(self.a)} and {len(self.b)} steps; compare equal lengths"
            )
        if self.a.observations.shape[1] != self.b.observations.shape[1]:
            raise RecordError(
                f"pair {self.id!r}: observation sizes {self.a.observations.shape[1]} and "
                f"{self.b.observations.shape[1]} differ"
            )
        object.__setattr__(self, "label", _check_probability("label", self.label))
