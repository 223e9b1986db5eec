"""Live-loop hooks: read labels from the store as they arrive.

* :class:`LabelFeed` — new labels since the last poll, as training records (for any consumer).
* :class:`HumanTeacher` — the teacher interface of the preference-learning loops, backed by people: ``ask`` turns
  segment-pair clips into pair tasks, ``collect`` returns the answers that have arrived (1, 0 or 0.5 = tie), and a
  budget counts queries asked against labels obtained.
* :func:`records_for_annotator` — one annotator's labels as records, e.g. to enroll them in a personal model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from mmpref.data import PreferenceList, PreferencePair, Rating
from mmpref.feedback.exchange import label_records
from mmpref.feedback.schema import annotators, labels, tasks
from mmpref.feedback.store import Label, LabelStore

Record = PreferencePair | PreferenceList | Rating


def choice_label(choice: object) -> float:
    """P(a ≻ b) of a pair answer: left (0) → 1, right (1) → 0, ``"tie"`` → 0.5."""
    return 0.5 if choice == "tie" else float(choice == 0)


class LabelFeed:
    """Polls the store for labels newer than the last one seen."""

    def __init__(self, store: LabelStore, since_id: int = 0):
        self.store = store
        self.last_id = since_id

    def poll(self) -> list[Label]:
        """Labels that arrived since the previous poll, oldest first."""
        new = self.store.labels(since_id=self.last_id)
        if new:
            self.last_id = new[-1].id
        return new


def records_for_annotator(store: LabelStore, annotator: str) -> list[Record]:
    """Every label of one annotator (by name) as a training record."""
    return [r for r in label_records(store) if r.user_id == annotator]


@dataclass
class TeacherBudget:
    """Queries asked vs labels obtained (a tie counts as obtained; an unanswered query does not)."""

    asked: int = 0
    obtained: int = 0
    ties: int = 0


@dataclass
class HumanTeacher:
    """Human answers for segment pairs, through the labelling app.

    Args:
        store: the label store the app serves.
        prompt: the question shown with every pair.
        source: tag of the tasks this teacher creates (``pbrl`` by default), kept in the store.
    """

    store: LabelStore
    prompt: str = "Which robot does the task better?"
    source: str = "pbrl"
    budget: TeacherBudget = field(default_factory=TeacherBudget)
    _pending: dict[int, str] = field(default_factory=dict)
    _feed: LabelFeed | None = None

    def __post_init__(self) -> None:
        self._feed = LabelFeed(self.store, since_id=max((lb.id for lb in self.store.labels()), default=0))

    def ask(self, pairs: Sequence[tuple[str, str | Path, str | Path]]) -> list[int]:
        """Create one pair task per (pair_id, clip_a, clip_b); returns the task ids."""
        created = []
        for pair_id, clip_a, clip_b in pairs:
            task_id = self.store.add_task("pair", [clip_a, clip_b], self.prompt, f"{self.source}:{pair_id}")
            self._pending[task_id] = pair_id
            created.append(task_id)
        self.budget.asked += len(created)
        return created

    def collect(self, wait_s: float = 0.0, poll_s: float = 0.5) -> dict[str, float]:
        """Answers that arrived for this teacher's tasks: {pair_id: P(a ≻ b)}; waits up to ``wait_s`` for any."""
        deadline = time.monotonic() + wait_s
        answers: dict[str, float] = {}
        while True:
            for label in self._feed.poll():
                pair_id = self._pending.pop(label.task_id, None)
                if pair_id is None:
                    continue
                choice = label.answer["choice"]
                answers[pair_id] = choice_label(choice)
                self.budget.obtained += 1
                self.budget.ties += choice == "tie"
            if answers or time.monotonic() >= deadline:
                return answers
            time.sleep(poll_s)

    def task_for(self, pair_id: str) -> int | None:
        """The task already posted for ``pair_id`` under this teacher's source tag (e.g. by a resumed run), if any."""
        with self.store.engine.connect() as conn:
            return conn.execute(
                sa.select(tasks.c.id).where(tasks.c.source == f"{self.source}:{pair_id}").order_by(tasks.c.id).limit(1)
            ).scalar_one_or_none()

    def first_answers(self, task_ids: Sequence[int]) -> dict[int, tuple[float, int]]:
        """The first answer of each of these tasks that has one: {task id: (P(a ≻ b), annotator id)}."""
        if not task_ids:
            return {}
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(labels.c.task_id, labels.c.answer, labels.c.annotator_id)
                .where(labels.c.task_id.in_(list(task_ids)))
                .order_by(labels.c.id)
            ).all()
        found: dict[int, tuple[float, int]] = {}
        for row in rows:
            if row.task_id not in found:
                found[row.task_id] = (choice_label(json.loads(row.answer)["choice"]), row.annotator_id)
        return found

    def annotator_count(self) -> int:
        """How many annotators the store has (none: nobody can answer yet)."""
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(annotators)).scalar_one()

    @property
    def outstanding(self) -> int:
        """Queries asked and not yet answered."""
        return len(self._pending)
