"""People as the PbRL loop's teacher: queried segment pairs become pair tasks of two clips in the labelling app.

``mmpref pbrl --teacher human --db labels.sqlite`` (``PbRLConfig.teacher = "human"``) attaches a
:class:`HumanPairTeacher` to the loop (:func:`attach_human`). At every feedback round it takes the pairs the loop's
query selection chose and, pair by pair, renders both segments as MP4 clips (:mod:`mmpref.control.pbrl.clips`) and
posts them to the store as one pair task through :class:`mmpref.feedback.hooks.HumanTeacher` (left = segment a), so
people can start while later clips render. Then it waits, showing a queue line (``answered k/n``), until every task
has an answer or ``human_timeout_s`` has passed since the last one was posted. The first answer of each task is the
label: left → P(a ≻ b) = 1, right → 0, tie → 0.5; unanswered queries are dropped (counted as skipped in the
budget, like a B-Pref skip). The loop then trains the reward on them as on scripted labels.

Interrupt and resume: with a human teacher the loop also checkpoints just before each feedback round, so a run
stopped while it waits resumes at that round with the same random state and the same queries. A task's source tag
is ``pbrl:<task>:<hash of both segments' contents>``, so the resumed round finds the tasks it had posted (and every
answer given to them meanwhile) instead of posting them again; clips are named by content too and are rendered
once. (The same holds for a rerun from scratch with the same settings, which replays the same segments.)

Tasks stay in the store after their round (the store has no way to withdraw a task): the app keeps serving them to
other annotators, and later answers are stored but not used.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpref.control.pbrl.clips import ClipRenderer, SimRecorder, segment_digest
from mmpref.control.teachers import Budget
from mmpref.data import SegmentPair
from mmpref.feedback.hooks import HumanTeacher
from mmpref.feedback.store import LabelStore, StoreError

if TYPE_CHECKING:
    from mmpref.control.pbrl.loop import PbRLLoop

log = logging.getLogger(__name__)

SOURCE = "pbrl"


def default_clips_dir(db: str) -> Path:
    """``<db folder>/<db name>_clips``: ``labels.sqlite`` → ``labels_clips/`` beside it."""
    path = Path(db)
    return path.with_name(f"{path.stem}_clips")


def pair_key(task: str, pair: SegmentPair) -> str:
    """``<task>:<hash>`` of a pair's two segments, in order: the same pair gets the same key after a resume."""
    both = f"{segment_digest(pair.a)}{segment_digest(pair.b)}".encode()
    return f"{task}:{hashlib.sha256(both).hexdigest()[:20]}"


class HumanPairTeacher:
    """The loop's teacher interface (``label_pairs``, ``budget``, ``rng``) answered by people through the app.

    Args:
        store: the label store the app serves.
        episodes: returns the loop's remembered episodes (with simulator states) that queried segments come from.
        renderer: renders segments as clips.
        task: the Meta-World task (part of every task's source tag).
        limit: the label budget (queries asked).
        prompt: the question shown with every pair.
        timeout_s: how long to wait for answers after a round's last task is posted (``None``: until all answered).
        poll_s: seconds between looks at the store.
        progress: show the queue line.
    """

    def __init__(
        self,
        store: LabelStore,
        episodes: Any,
        renderer: ClipRenderer,
        task: str,
        limit: int | None,
        prompt: str,
        timeout_s: float | None = None,
        poll_s: float = 1.0,
        progress: bool = True,
    ):
        self.store, self.episodes, self.renderer, self.task = store, episodes, renderer, task
        self.human = HumanTeacher(store, prompt=prompt, source=SOURCE)
        self.budget = Budget(limit=limit)
        self.rng = np.random.default_rng(0)  # draws nothing; the loop checkpoints every teacher's generator
        self.timeout_s, self.poll_s, self.progress = timeout_s, poll_s, progress
        self.asked: dict[int, SegmentPair] = {}  # every task this teacher posted or found again: the query it shows
        self.rounds = 0

    # --- posting ----------------------------------------------------------------------------------------------------

    def post(self, pair: SegmentPair) -> int | None:
        """The task of one query: found again, or rendered and posted now; ``None`` if it cannot be rendered."""
        key = pair_key(self.task, pair)
        task_id = self.human.task_for(key)
        if task_id is None:
            episodes = self.episodes()
            try:
                clips = [self.renderer.clip(segment, episodes) for segment in (pair.a, pair.b)]
            except LookupError as err:  # a segment from an episode recorded before the recorder was attached
                log.warning("query %s dropped: %s", pair.id, err)
                return None
            task_id = self.human.ask([(key, clips[0], clips[1])])[0]
        self.asked[task_id] = pair
        return task_id

    # --- answers ----------------------------------------------------------------------------------------------------

    def answers(self, task_ids: Sequence[int]) -> dict[int, tuple[float, int]]:
        """The first answer of each of these tasks that has one: {task id: (P(a ≻ b), annotator id)}."""
        return self.human.first_answers(task_ids)

    def _warn_without_annotators(self) -> None:
        if self.human.annotator_count() == 0:
            log.warning(
                "%s has no annotators yet: nobody can answer until one is created "
                "(`mmpref label --db %s annotator NAME`)",
                self.store.name,
                self.store.name,
            )

    def wait(self, seconds: float) -> None:
        """Sleep between looks at the store (where a Ctrl-C usually lands; tests interrupt here)."""
        time.sleep(seconds)

    def label_pairs(self, pairs: Sequence[SegmentPair]) -> list[SegmentPair]:
        """Post the round's queries, wait for answers, return the answered pairs labelled (the others dropped)."""
        from tqdm.auto import tqdm

        if self.budget.remaining < len(pairs):
            raise RuntimeError(f"label budget of {self.budget.limit} queries is spent")
        self.rounds += 1
        self._warn_without_annotators()
        log.info(
            "round %d: posting %d pair tasks to %s; label them in the app (`mmpref label --db %s serve`)",
            self.rounds,
            len(pairs),
            self.store.name,
            self.store.name,
        )
        bar = tqdm(total=len(pairs), desc=f"round {self.rounds}: answered", unit="pair", disable=not self.progress)
        posted: dict[int, SegmentPair] = {}
        got: dict[int, tuple[float, int]] = {}

        shown = [0, 0]  # (answered, posted) on the queue line

        def look() -> None:  # redraw the queue line only when it changed (a log file gets one line per change)
            got.update(self.answers([t for t in posted if t not in got]))
            if [len(got), len(posted)] != shown:
                bar.set_postfix_str(f"posted {len(posted)}/{len(pairs)}", refresh=False)
                bar.update(len(got) - shown[0])
                bar.refresh()
                shown[:] = [len(got), len(posted)]

        try:
            for pair in pairs:
                task_id = self.post(pair)
                if task_id is not None and task_id not in posted:
                    posted[task_id] = pair
                    look()
            deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
            while len(got) < len(posted) and (deadline is None or time.monotonic() < deadline):
                left = self.poll_s if deadline is None else deadline - time.monotonic()
                self.wait(max(0.0, min(self.poll_s, left)))
                look()
        finally:
            bar.close()
            self.renderer.close()  # the render env holds an OpenGL context: do not keep it between rounds
        out = []
        for task_id, pair in posted.items():
            if task_id in got:
                label, annotator = got[task_id]
                out.append(SegmentPair(id=pair.id, a=pair.a, b=pair.b, label=label, teacher=f"human:{annotator}"))
        self.budget.asked += len(pairs)
        self.budget.labelled += len(out)
        self.budget.skipped += len(pairs) - len(out)
        self.budget.equal += sum(p.label == 0.5 for p in out)
        log.info(
            "round %d: %d of %d queries answered (%d dropped)",
            self.rounds,
            len(out),
            len(pairs),
            len(pairs) - len(out),
        )
        return out


def attach_human(loop: PbRLLoop) -> HumanPairTeacher:
    """Make people the loop's teacher: open the store, record simulator states from now on, render clips on demand.

    Raises:
        StoreError: the store is missing, not a label store, or damaged (the message names the file and the fix).
    """
    c = loop.config
    store = LabelStore(c.db, create=False)
    clips = Path(c.clips_dir) if c.clips_dir else default_clips_dir(c.db)
    if clips.exists() and not clips.is_dir():
        raise StoreError(f"{clips}: clips_dir is a file; give a folder for the clips of queries")
    loop.env.recorder = SimRecorder()
    renderer = ClipRenderer(c.task, clips, fps=c.human_clip_fps, every=c.human_clip_every, seed=c.seed)
    loop.teacher = HumanPairTeacher(
        store,
        loop.env.recent_episodes,
        renderer,
        c.task,
        limit=c.max_labels,
        prompt=c.human_prompt or f"{c.task}: which robot does the task better?",
        timeout_s=c.human_timeout_s,
        poll_s=c.human_poll_s,
        progress=loop.progress,
    )
    return loop.teacher
