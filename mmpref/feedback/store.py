"""The durable label store: media, tasks, annotators and labels in SQL (SQLite by default, any SQLAlchemy URL).

Durability: every label is one transaction; SQLite runs in WAL mode with ``synchronous=FULL``, so a label whose
write returned survives the process being killed. A label carries a client-made ``label_uuid``: a retried write of
the same label is answered with the stored one instead of being stored twice, and one annotator labels a task at
most once unless the task was re-served on purpose (``repeat``).

Media: a file is registered only after :func:`mmpref.data.media.check_media` found it to be an image or a video
(decoded or probed); its media type is stored (``media.mime``) and the app serves nothing else. Rows written by a
store older than version 3 are checked when the store is migrated; those that fail keep ``mime`` NULL and are
never served (their tasks are not queued). Several tasks are created in one transaction (:meth:`add_tasks`), after
every media file has been checked, so a bad file adds nothing.

Schema: versioned in ``schema_info``; :data:`MIGRATIONS` upgrades any older store in place, inside a transaction,
when it is opened. A file that is not a label store (random bytes, a truncated SQLite file, another program's
database) raises :class:`StoreError` naming it; a read-only job opens with ``create=False`` so a mistyped path is an
error, not a new empty store. Other databases: pass e.g. ``postgresql+psycopg://user@host/db`` as the URL
(SQLAlchemy Core only, no SQLite-specific SQL outside the connection pragmas and the integrity check); SQLite is the
tested backend.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mmpref.data.media import MediaError, check_media
from mmpref.feedback.records import TASK_KINDS, Label, StoreError, Task, TaskKind, hash_token, validate_answer  # noqa: F401
from mmpref.feedback.schema import (  # noqa: F401  (the tables and the version are part of this module's API)
    MAX_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    annotators,
    labels,
    media,
    metadata,
    schema_info,
    sqlite_pragmas,
    tasks,
    valid_id,
)


class LabelStore:
    """Open (creating or migrating) a label store.

    Args:
        url: a SQLAlchemy URL, or a filesystem path meaning SQLite (``labels.sqlite``).
        create: create the store if it does not exist; ``False`` (read-only jobs: export, enroll) makes a missing
            SQLite file an error instead of a new empty store.

    Raises:
        StoreError: naming the file: missing (with ``create=False``), not a label store, corrupt, or too new.
    """

    def __init__(self, url: str | Path, *, create: bool = True):
        url = str(url)
        self.path: Path | None = None
        if "://" not in url:
            self.path = Path(url)
            url = f"sqlite:///{url}"
        elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            self.path = Path(url[len("sqlite:///") :])
        self.url = url
        self.name = str(self.path) if self.path is not None else url
        self._create = create
        if self.path is not None:
            if self.path.is_dir():
                raise StoreError(f"{self.name}: is a folder, not a label store; give --db a .sqlite file")
            if not self.path.exists():
                if not create:
                    raise StoreError(
                        f"{self.name}: no label store here; check --db (a store is created by "
                        "`mmpref label import` or `mmpref label annotator`)"
                    )
                self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", sqlite_pragmas)
        try:
            self._open()
            self._wal()
        except sa.exc.DBAPIError as err:
            self.engine.dispose()
            raise StoreError(
                f"{self.name}: not a readable label store ({getattr(err, 'orig', err)}); restore it from a backup "
                "or point --db at the right file"
            ) from None

    # --- schema -------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "sqlite":
                verdict = conn.exec_driver_sql("PRAGMA quick_check").scalar()
                if verdict != "ok":
                    raise StoreError(f"{self.name}: the SQLite file is damaged ({verdict}); restore it from a backup")
            inspector = sa.inspect(conn)
            if not inspector.has_table("schema_info"):
                others = inspector.get_table_names()
                if not others and not self._create:
                    raise StoreError(f"{self.name}: an empty file, not a label store; check --db")
                if others:
                    raise StoreError(
                        f"{self.name}: a database, but not a label store (it holds tables {sorted(others)[:5]}); "
                        "point --db at a label store or a new file"
                    )
                metadata.create_all(conn)
                conn.execute(schema_info.insert().values(version=SCHEMA_VERSION))
                return
            version = conn.execute(sa.select(schema_info.c.version)).scalar()
            if not isinstance(version, int) or not 1 <= version:
                raise StoreError(f"{self.name}: schema_info holds no valid version ({version!r}); restore a backup")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.name}: schema version {version} is newer than this mmpref "
                    f"({SCHEMA_VERSION}); upgrade mmpref"
                )
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(schema_info.update().values(version=version))

    def _wal(self) -> None:
        """WAL mode (a property of the SQLite file, kept once set): set only on a file known to be a label store."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as conn:
            if conn.exec_driver_sql("PRAGMA journal_mode").scalar() != "wal":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                conn.commit()

    @property
    def schema_version(self) -> int:
        """The store's schema version."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(schema_info.c.version)).scalar_one()

    # --- media, tasks, annotators ---------------------------------------------------------------------------------

    @staticmethod
    def check_media(path: str | Path) -> tuple[Path, str, str]:
        """(resolved path, kind, media type) of a file that passes :func:`mmpref.data.media.check_media`.

        Raises:
            StoreError: naming the file and what is wrong with it.
        """
        try:
            resolved = Path(path).resolve()
            info = check_media(resolved)
        except MediaError as err:
            raise StoreError(f"{path}: cannot be registered as media: {err.reason}") from None
        except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL in the path
            raise StoreError(f"{path}: cannot be registered as media ({err}); fix the path") from None
        return resolved, info.kind, info.mime

    @staticmethod
    def _media_id(conn: Connection, checked: tuple[Path, str, str]) -> int:
        path, kind, mime = checked
        row = conn.execute(sa.select(media.c.id, media.c.mime).where(media.c.path == str(path))).first()
        if row is None:
            return conn.execute(media.insert().values(path=str(path), kind=kind, mime=mime)).inserted_primary_key[0]
        if row.mime != mime:  # checked again now (an older row that failed its check, or a replaced file)
            conn.execute(media.update().where(media.c.id == row.id).values(kind=kind, mime=mime))
        return row.id

    def add_media(self, path: str | Path) -> int:
        """Register a media file after checking it (resolved to an absolute path); returns its id (reused if known)."""
        checked = self.check_media(path)
        with self.engine.begin() as conn:
            return self._media_id(conn, checked)

    def media_row(self, media_id: Any) -> Any | None:
        """The registered row (``path``, ``kind``, ``mime``) of a media id, ``None`` if unknown or not an id."""
        if not valid_id(media_id):
            return None
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(media.c.path, media.c.kind, media.c.mime).where(media.c.id == media_id)
            ).first()

    def media_path(self, media_id: Any) -> Path | None:
        """The registered path of a checked media id (``None`` if unknown or never checked)."""
        row = self.media_row(media_id)
        return None if row is None or row.mime is None else Path(row.path)

    def add_task(
        self, kind: TaskKind, media_paths: Sequence[str | Path], prompt: str | None = None, source: str | None = None
    ) -> int:
        """Create a task over registered (or newly registered, after their check) media; returns its id."""
        return self.add_tasks([(kind, media_paths, prompt, source)])[0]

    def add_tasks(
        self,
        specs: Sequence[tuple[TaskKind, Sequence[str | Path], str | None, str | None]],
        answers: Sequence[tuple[int, dict[str, Any], str] | None] | None = None,
    ) -> list[int]:
        """Create tasks (kind, media paths, prompt, source) in one transaction; all or nothing.

        Every media file is checked before anything is written. ``answers`` (one per spec, or ``None``) stores a
        label (annotator id, answer, label uuid) for its task in the same transaction.

        Raises:
            StoreError: naming the spec and the problem; the store is unchanged.
        """
        checked: dict[str, tuple[Path, str, str]] = {}
        for index, (kind, paths, _prompt, _source) in enumerate(specs):
            if kind not in TASK_KINDS:
                raise StoreError(f"task {index}: kind must be one of {TASK_KINDS}, got {kind!r}")
            low, high = {"pair": (2, 2), "list": (2, 64), "rating": (1, 1)}[kind]
            if not low <= len(paths) <= high:
                raise StoreError(f"task {index}: a {kind} task needs {low}-{high} media, got {len(paths)}")
            for item in paths:
                if str(item) not in checked:
                    checked[str(item)] = self.check_media(item)
        created = []
        with self.engine.begin() as conn:
            ids = {item: self._media_id(conn, found) for item, found in checked.items()}
            for index, (kind, paths, prompt, source) in enumerate(specs):
                task_id = conn.execute(
                    tasks.insert().values(
                        kind=kind,
                        media_ids=json.dumps([ids[str(p)] for p in paths]),
                        prompt=prompt,
                        source=source,
                        created_at=time.time(),
                    )
                ).inserted_primary_key[0]
                created.append(task_id)
                if answers is not None and answers[index] is not None:
                    annotator_id, answer, label_uuid = answers[index]
                    self._insert_label(conn, annotator_id, task_id, answer, label_uuid, None, False)
        return created

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
        items = [{"id": i, "path": found[i].path, "kind": found[i].kind, "mime": found[i].mime} for i in ids]
        return Task(row.id, row.kind, items, row.prompt, row.source)

    def task(self, task_id: int) -> Task | None:
        """One task, or ``None`` (also for anything that is not a valid id)."""
        if not valid_id(task_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()
            return None if row is None else self._task_from_row(conn, row)

    # --- the queue and labels -------------------------------------------------------------------------------------

    def next_task(self, annotator_id: int, repeat: bool = False, kinds: Iterable[str] = TASK_KINDS) -> Task | None:
        """The next task for an annotator: one they have not labelled (unless ``repeat``), fewest labels first.

        Tasks with a media file that never passed the check (rows of an older store) are skipped.
        """
        with self.engine.connect() as conn:
            done = sa.select(labels.c.task_id).where(labels.c.annotator_id == annotator_id)
            counts = sa.select(labels.c.task_id, sa.func.count().label("n")).group_by(labels.c.task_id).subquery()
            query = (
                sa.select(tasks)
                .outerjoin(counts, counts.c.task_id == tasks.c.id)
                .where(tasks.c.kind.in_(list(kinds)))
                .order_by(sa.func.coalesce(counts.c.n, 0), tasks.c.id)
            )
            if not repeat:
                query = query.where(tasks.c.id.not_in(done))
            unchecked = set(conn.execute(sa.select(media.c.id).where(media.c.mime.is_(None))).scalars())
            for row in conn.execute(query if unchecked else query.limit(1)):
                if not unchecked.intersection(json.loads(row.media_ids)):
                    return self._task_from_row(conn, row)
            return None

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
        with self.engine.begin() as conn:
            return self._insert_label(conn, annotator_id, task_id, answer, label_uuid, response_ms, repeat)

    def _insert_label(
        self,
        conn: Connection,
        annotator_id: int,
        task_id: int,
        answer: Any,
        label_uuid: str,
        response_ms: float | None,
        repeat: bool,
    ) -> tuple[Label, bool]:
        if not isinstance(label_uuid, str) or not 8 <= len(label_uuid) <= 64:
            raise StoreError("field 'label_uuid' must be a string of 8-64 characters (a client-made unique id)")
        if response_ms is not None and not (isinstance(response_ms, (int, float)) and 0 <= response_ms < 1e9):
            raise StoreError("field 'response_ms' must be a non-negative number of milliseconds")
        existing = conn.execute(sa.select(labels).where(labels.c.label_uuid == label_uuid)).first()
        if existing is not None:
            if existing.annotator_id != annotator_id:
                raise StoreError("field 'label_uuid' is already used; make a new one per label")
            return self._label_from_row(existing), False
        row = None
        if valid_id(task_id):
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
