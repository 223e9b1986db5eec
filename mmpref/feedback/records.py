"""What the label store holds, as plain values: tasks, labels, the answer rules and token hashing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from mmpref.errors import MmprefError

TaskKind = Literal["pair", "list", "rating"]
TASK_KINDS = ("pair", "list", "rating")


class StoreError(MmprefError):
    """A request the store refuses: the message says which field and why."""


def hash_token(token: str) -> str:
    """SHA-256 of an annotator token (tokens themselves are never stored)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def validate_answer(kind: str, answer: Any, size: int) -> dict[str, Any]:
    """Check an answer against its task and return it normalised.

    * pair: ``{"choice": 0 | 1 | "tie"}`` (which item is preferred, or a tie / can't tell);
    * list: ``{"ranking": [media positions best first]}``, a permutation of ``range(size)``;
    * rating: ``{"rating": 1..5}``.
    """
    if not isinstance(answer, dict):
        raise StoreError("field 'answer' must be an object")
    if kind == "pair":
        choice = answer.get("choice")
        if choice not in (0, 1, "tie"):
            raise StoreError("field 'answer.choice' must be 0, 1 or 'tie'")
        return {"choice": choice}
    if kind == "list":
        ranking = answer.get("ranking")
        if not isinstance(ranking, list) or sorted(ranking) != list(range(size)):
            raise StoreError(f"field 'answer.ranking' must be a permutation of 0..{size - 1} (best first)")
        return {"ranking": ranking}
    if kind == "rating":
        rating = answer.get("rating")
        if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5:
            raise StoreError("field 'answer.rating' must be an integer from 1 to 5")
        return {"rating": rating}
    raise StoreError(f"unknown task kind {kind!r}")


@dataclass(frozen=True)
class Task:
    """A labelling task: ``kind``, its media (id, path, kind) in display order, an optional prompt."""

    id: int
    kind: str
    media: list[dict[str, Any]]
    prompt: str | None
    source: str | None


@dataclass(frozen=True)
class Label:
    """A stored label."""

    id: int
    label_uuid: str
    task_id: int
    annotator_id: int
    answer: dict[str, Any]
    response_ms: float | None
    created_at: float
    repeat: int
