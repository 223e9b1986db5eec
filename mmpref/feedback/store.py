"""The durable label store: media, tasks, annotators and labels in SQL (SQLite by default, any SQLAlchemy URL).

Durability: every label is one transaction; SQLite runs in WAL mode with ``synchronous=FULL``, so a label whose
write returned survives the process being killed. A label carries a client-made ``label_uuid``: a retried write of
the same label is answered with the stored one instead of being stored twice, and one annotator labels a task at
most once unless the task was re-served on purpose (``repeat``).

Schema: versioned in ``schema_info``; :data:`MIGRATIONS` upgrades any older store in place, inside a transaction,
when it is opened. Other databases: pass e.g. ``postgresql+psycopg://user@host/db`` as the URL (SQLAlchemy Core
only, no SQLite-specific SQL outside the connection pragmas); SQLite is the tested backend.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

SCHEMA_VERSION = 2
TaskKind = Literal["pair", "list", "rating"]
TASK_KINDS = ("pair", "list", "rating")
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".gif"})  # a folder of frames is a video too

metadata = sa.MetaData()
schema_info = sa.Table("schema_info", metadata, sa.Column("version", sa.Integer, nullable=False))
media = sa.Table(
    "media",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),  # image | video
)
tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("media_ids", sa.Text, nullable=False),  # JSON list of media ids, in display order
    sa.Column("prompt", sa.Text, nullable=True),
    sa.Column("source", sa.Text, nullable=True),  # who created it: "import", "pbrl", ... (added in version 2)
    sa.Column("created_at", sa.Float, nullable=False),
)
annotators = sa.Table(
    "annotators",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
)
labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("label_uuid", sa.String(64), nullable=False, unique=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("answer", sa.Text, nullable=False),  # JSON, see validate_answer
    sa.Column("response_ms", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("task_id", "annotator_id", "repeat", name="one_label_per_serving"),
)


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2 records where each task came from (``tasks.source``)."""
    conn.execute(sa.text("ALTER TABLE tasks ADD COLUMN source TEXT"))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1_to_2}


class StoreError(ValueError):
    """A request the store refuses: the message says which field and why."""


def hash_token(token: str) -> str:
    """SHA-256 of an annotator token (tokens themselves are never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class LabelStore:
    """Open (creating or migrating) a label store.

    Args:
        url: a SQLAlchemy URL, or a filesystem path meaning SQLite (``labels.sqlite``).
    """

    def __init__(self, url: str | Path):
        url = str(url)
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{url}"
        self.url = url
        self.engine: Engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._open()

    # --- schema -------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        with self.engine.begin() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table("schema_info"):
                metadata.create_all(conn)
                conn.execute(schema_info.insert().values(version=SCHEMA_VERSION))
                return
            version = conn.execute(sa.select(schema_info.c.version)).scalar_one()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.url}: schema version {version} is newer than this mmpref "
                    f"({SCHEMA_VERSION}); upgrade mmpref"
                )
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(schema_info.update().values(version=version))

    @property
    def schema_version(self) -> int:
        """The store's schema version."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(schema_info.c.version)).scalar_one()

    # --- media, tasks, annotators ---------------------------------------------------------------------------------

    def add_media(self, path: str | Path, kind: str | None = None) -> int:
        """Register a media file (resolved to an absolute path; it must exist); returns its id (reused if known)."""
        resolved = Path(path).resolve()
        if not resolved.exists():
            raise StoreError(f"{path}: media file not found")
        if kind is None:
            kind = "video" if resolved.is_dir() or resolved.suffix.lower() in VIDEO_SUFFIXES else "image"
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(media.c.id).where(media.c.path == str(resolved))).scalar_one_or_none()
            if found is not None:
                return found
            return conn.execute(media.insert().values(path=str(resolved), kind=kind)).inserted_primary_key[0]

    def media_path(self, media_id: int) -> Path | None:
        """The registered path of a media id (``None`` if unknown): the only way files are ever served."""
        with self.engine.connect() as conn:
            path = conn.execute(sa.select(media.c.path).where(media.c.id == media_id)).scalar_one_or_none()
        return None if path is None else Path(path)

    def add_task(
        self, kind: TaskKind, media_paths: Sequence[str | Path], prompt: str | None = None, source: str | None = None
    ) -> int:
        """Create a task over registered (or newly registered) media; returns its id."""
        if kind not in TASK_KINDS:
            raise StoreError(f"task kind must be one of {TASK_KINDS}, got {kind!r}")
        need = {"pair": (2, 2), "list": (2, 64), "rating": (1, 1)}[kind]
        if not need[0] <= len(media_paths) <= need[1]:
            raise StoreError(f"a {kind} task needs {need[0]}-{need[1]} media, got {len(media_paths)}")
        ids = [self.add_media(p) for p in media_paths]
        with self.engine.begin() as conn:
            return conn.execute(
                tasks.insert().values(
                    kind=kind, media_ids=json.dumps(ids), prompt=prompt, source=source, created_at=time.time()
                )
            ).inserted_primary_key[0]

    def add_annotator(self, name: str, token: str | None = None) -> str:
        """Create an annotator and return their token (shown once; only its hash is stored)."""
        token = token or secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(annotators.c.id).where(annotators.c.name == name)).scalar_one_or_none()
            if exists is not None:
                raise StoreError(f"annotator {name!r} already exists")
            conn.execute(annotators.insert().values(name=name, token_hash=hash_token(token)))
        return token

    def annotator_for_token(self, token: str | None) -> tuple[int, str] | None:
        """(id, name) of the annotator with this token, or ``None``."""
        if not token:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(annotators.c.id, annotators.c.name).where(annotators.c.token_hash == hash_token(token))
            ).first()
        return None if row is None else (row.id, row.name)

    def _task_from_row(self, conn: Connection, row: Any) -> Task:
        ids = json.loads(row.media_ids)
        found = {r.id: r for r in conn.execute(sa.select(media).where(media.c.id.in_(ids)))}
        items = [{"id": i, "path": found[i].path, "kind": found[i].kind} for i in ids]
        return Task(row.id, row.kind, items, row.prompt, row.source)

    def task(self, task_id: int) -> Task | None:
        """One task, or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()
            return None if row is None else self._task_from_row(conn, row)

    # --- the queue and labels -------------------------------------------------------------------------------------

    def next_task(self, annotator_id: int, repeat: bool = False, kinds: Iterable[str] = TASK_KINDS) -> Task | None:
        """The next task for an annotator: one they have not labelled (unless ``repeat``), fewest labels first."""
        with self.engine.connect() as conn:
            done = sa.select(labels.c.task_id).where(labels.c.annotator_id == annotator_id)
            counts = sa.select(labels.c.task_id, sa.func.count().label("n")).group_by(labels.c.task_id).subquery()
            query = (
                sa.select(tasks)
                .outerjoin(counts, counts.c.task_id == tasks.c.id)
                .where(tasks.c.kind.in_(list(kinds)))
                .order_by(sa.func.coalesce(counts.c.n, 0), tasks.c.id)
                .limit(1)
            )
            if not repeat:
                query = query.where(tasks.c.id.not_in(done))
            row = conn.execute(query).first()
            return None if row is None else self._task_from_row(conn, row)

    def add_label(
        self,
        annotator_id: int,
        task_id: int,
        answer: Any,
        label_uuid: str,
        response_ms: float | None = None,
        repeat: bool = False,
    ) -> tuple[Label, bool]:
        """Store one label in one transaction; returns (label, created).

        A ``label_uuid`` already stored by the same annotator returns that label with ``created=False`` (a retried
        request); one by another annotator is refused. A second label of the same task by the same annotator is
        refused unless ``repeat``.
        """
        if not isinstance(label_uuid, str) or not 8 <= len(label_uuid) <= 64:
            raise StoreError("field 'label_uuid' must be a string of 8-64 characters (a client-made unique id)")
        if response_ms is not None and not (isinstance(response_ms, (int, float)) and 0 <= response_ms < 1e9):
            raise StoreError("field 'response_ms' must be a non-negative number of milliseconds")
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(labels).where(labels.c.label_uuid == label_uuid)).first()
            if existing is not None:
                if existing.annotator_id != annotator_id:
                    raise StoreError("field 'label_uuid' is already used; make a new one per label")
                return self._label_from_row(existing), False
            row = conn.execute(sa.select(tasks.c.kind, tasks.c.media_ids).where(tasks.c.id == task_id)).first()
            if row is None:
                raise StoreError(f"unknown task {task_id}")
            normalised = validate_answer(row.kind, answer, len(json.loads(row.media_ids)))
            previous = conn.execute(
                sa.select(sa.func.max(labels.c.repeat)).where(
                    labels.c.task_id == task_id, labels.c.annotator_id == annotator_id
                )
            ).scalar_one_or_none()
            if previous is not None and not repeat:
                raise StoreError(
                    f"task {task_id} is already labelled by this annotator (ask for a repeat to label it again)"
                )
            values = {
                "label_uuid": label_uuid,
                "task_id": task_id,
                "annotator_id": annotator_id,
                "answer": json.dumps(normalised),
                "response_ms": response_ms,
                "created_at": time.time(),
                "repeat": 0 if previous is None else previous + 1,
            }
            new_id = conn.execute(labels.insert().values(**values)).inserted_primary_key[0]
        return Label(id=new_id, **{**values, "answer": normalised}), True

    @staticmethod
    def _label_from_row(row: Any) -> Label:
        return Label(
            row.id,
            row.label_uuid,
            row.task_id,
            row.annotator_id,
            json.loads(row.answer),
            row.response_ms,
            row.created_at,
            row.repeat,
        )

    def labels(self, annotator_id: int | None = None, since_id: int = 0) -> list[Label]:
        """Labels in arrival order (of one annotator, and/or after a label id: for live loops)."""
        query = sa.select(labels).where(labels.c.id > since_id).order_by(labels.c.id)
        if annotator_id is not None:
            query = query.where(labels.c.annotator_id == annotator_id)
        with self.engine.connect() as conn:
            return [self._label_from_row(r) for r in conn.execute(query)]

    def progress(self, annotator_id: int) -> dict[str, int]:
        """How many tasks an annotator has labelled and how many remain for them."""
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one()
            done = conn.execute(
                sa.select(sa.func.count(sa.distinct(labels.c.task_id))).where(labels.c.annotator_id == annotator_id)
            ).scalar_one()
        return {"labelled": done, "remaining": total - done, "total": total}
