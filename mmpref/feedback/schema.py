"""The label store's schema: its tables, its version, the migrations from older versions, the SQLite settings.

Version history: 1 (media, tasks, annotators, labels); 2 adds ``tasks.source``; 3 adds ``media.mime``, the media type
found by the media check (NULL: never checked, never served), and checks every file registered before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mmpref.data.media import MediaError, check_media

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3
MAX_ID = 2**63 - 1  # the largest id SQL's BIGINT holds; larger ids are unknown, never an error

metadata = sa.MetaData()
schema_info = sa.Table("schema_info", metadata, sa.Column("version", sa.Integer, nullable=False))
media = sa.Table(
    "media",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),  # image | video
    sa.Column("mime", sa.String(32), nullable=True),  # the checked media type; NULL: never checked, never served
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


def _migrate_2_to_3(conn: Connection) -> None:
    """Version 3 serves only checked media: each registered file is probed now; a failure leaves ``mime`` NULL."""
    conn.execute(sa.text("ALTER TABLE media ADD COLUMN mime VARCHAR(32)"))
    for row in conn.execute(sa.text("SELECT id, path FROM media")).all():
        try:
            info = check_media(row.path, decode=False)
        except MediaError as err:
            log.warning("media %d is not served (registered by an older mmpref, fails the check): %s", row.id, err)
            continue
        conn.execute(media.update().where(media.c.id == row.id).values(kind=info.kind, mime=info.mime))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1_to_2, 2: _migrate_2_to_3}


def valid_id(value: Any) -> bool:
    """Whether ``value`` is an id SQL can hold (1 .. 2^63 - 1): anything else is simply unknown."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings (durable commits, foreign keys, waiting on locks); none writes the file."""
    cursor = dbapi_connection.cursor()  # WAL is switched on by the store, once the file is known to be a store
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
