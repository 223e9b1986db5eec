"""Moving labels between the store and the formats training reads (JSONL manifests, Pick-a-Pic Parquet)."""

from __future__ import annotations

from pathlib import Path

from mmpref.data import (
    PreferenceList,
    PreferencePair,
    Rating,
    read_jsonl_manifest,
    write_jsonl_manifest,
    write_pickapic_parquet,
)
from mmpref.feedback.store import LabelStore, StoreError, annotators


def label_records(store: LabelStore) -> list[PreferencePair | PreferenceList | Rating]:
    """Every stored label as a training record; ``user_id`` = annotator name, task/timing facts in ``meta``."""
    with store.engine.connect() as conn:
        names = {row.id: row.name for row in conn.execute(annotators.select())}
    records = []
    for label in store.labels():
        task = store.task(label.task_id)
        paths = [m["path"] for m in task.media]
        meta = {
            "task_id": task.id,
            "response_ms": label.response_ms,
            "created_at": label.created_at,
            "label_uuid": label.label_uuid,
            "repeat": label.repeat,
        }
        common = {"id": f"label{label.id}", "prompt": task.prompt, "user_id": names[label.annotator_id], "meta": meta}
        if task.kind == "pair":
            choice = label.answer["choice"]
            records.append(
                PreferencePair(a=paths[0], b=paths[1], label=0.5 if choice == "tie" else float(choice == 0), **common)
            )
        elif task.kind == "list":
            ranking = label.answer["ranking"]
            scores = [0.0] * len(paths)
            for place, position in enumerate(ranking):
                scores[position] = float(len(paths) - 1 - place)
            records.append(PreferenceList(items=tuple(paths), scores=tuple(scores), **common))
        else:
            records.append(Rating(item=paths[0], rating=float(label.answer["rating"]), scale=(1.0, 5.0), **common))
    return records


def export_labels(store: LabelStore, path: str | Path) -> Path:
    """Write all labels: ``.jsonl`` (pairs, lists, ratings) or ``.parquet`` (Pick-a-Pic layout, pairs only)."""
    path = Path(path)
    records = label_records(store)
    if path.suffix.lower() == ".parquet":
        return write_pickapic_parquet([r for r in records if isinstance(r, PreferencePair)], path)
    if path.suffix.lower() == ".jsonl":
        return write_jsonl_manifest(records, path)
    raise StoreError(f"{path}: export to .jsonl or .parquet")


def import_manifest(store: LabelStore, path: str | Path, source: str = "import") -> list[int]:
    """Create one task per record of a JSONL manifest (pairs, lists, ratings of media files); returns task ids.

    The file is validated whole first (missing or unreadable media are reported with their lines), so a bad file
    adds nothing.
    """
    records = read_jsonl_manifest(path)
    for record in records:
        items = (
            (record.a, record.b)
            if isinstance(record, PreferencePair)
            else (record.items if isinstance(record, PreferenceList) else (record.item,))
        )
        if not all(isinstance(item, str) for item in items):
            raise StoreError(
                f"{path}: record {record.id!r} holds feature vectors or bytes; labelling tasks need media files"
            )
    created = []
    for record in records:
        if isinstance(record, PreferencePair):
            created.append(store.add_task("pair", [record.a, record.b], record.prompt, source))
        elif isinstance(record, PreferenceList):
            created.append(store.add_task("list", list(record.items), record.prompt, source))
        else:
            created.append(store.add_task("rating", [record.item], record.prompt, source))
    return created


def import_pickapic(
    store: LabelStore, path: str | Path, media_dir: str | Path, ties: str = "keep", annotator: str | None = None
) -> list[int]:
    """Create pair tasks from a Pick-a-Pic-style Parquet; images held as bytes are written to ``media_dir``.

    Image bytes are stored once per content (file name = SHA-256), so re-importing adds no duplicate media. With
    ``annotator``, the file's own labels are imported too, attributed to that (existing) annotator: label_0 = 1 →
    choice 0, 0 → choice 1, 0.5 → tie.
    """
    import hashlib

    from mmpref.data import read_pickapic_parquet
    from mmpref.data.io import atomic_write

    pairs = read_pickapic_parquet(path, ties=ties)  # validates every row (and decodes every image) first
    annotator_id = None
    if annotator is not None:
        with store.engine.connect() as conn:
            annotator_id = conn.execute(annotators.select().where(annotators.c.name == annotator)).first()
        if annotator_id is None:
            raise StoreError(f"unknown annotator {annotator!r}; create them with `mmpref label annotator`")
        annotator_id = annotator_id.id
    media_dir = Path(media_dir)
    created = []
    for pair in pairs:
        paths = []
        for item in (pair.a, pair.b):
            if isinstance(item, bytes):
                target = media_dir / f"{hashlib.sha256(item).hexdigest()}.img"
                if not target.exists():
                    with atomic_write(target, "wb") as handle:
                        handle.write(item)
                item = target
            paths.append(item)
        task_id = store.add_task("pair", paths, pair.prompt, source=f"pickapic:{pair.id}")
        created.append(task_id)
        if annotator_id is not None:
            choice = "tie" if pair.label == 0.5 else (0 if pair.label > 0.5 else 1)
            store.add_label(annotator_id, task_id, {"choice": choice}, label_uuid=f"pickapic-{task_id}-{pair.id}"[:64])
    return created
