"""Moving labels between the store and the formats training reads (JSONL manifests, Pick-a-Pic Parquet)."""

from __future__ import annotations

from pathlib import Path

from mmpref.data import (
    DataError,
    PreferenceList,
    PreferencePair,
    Rating,
    read_jsonl_manifest,
    write_jsonl_manifest,
    write_pickapic_parquet,
)
from mmpref.data.io import MediaRoot
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
    """Write all labels: ``.jsonl`` (pairs, lists, ratings) or ``.parquet`` (Pick-a-Pic layout, pairs only).

    Raises:
        StoreError: a wrong suffix, or nothing to export (an existing file is then left as it was).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise StoreError(f"{path}: export to .jsonl or .parquet")
    records = label_records(store)
    if suffix == ".parquet":
        records = [r for r in records if isinstance(r, PreferencePair)]
    if not records:
        what = "pair labels (Parquet holds pairs only)" if suffix == ".parquet" else "labels"
        kept = " (its current contents are kept)" if path.exists() else ""
        raise StoreError(f"{store.name}: holds no {what}; nothing written to {path}{kept}; check --db")
    if suffix == ".parquet":
        return write_pickapic_parquet(records, path)
    return write_jsonl_manifest(records, path)


def _items(record: PreferencePair | PreferenceList | Rating) -> tuple:
    if isinstance(record, PreferencePair):
        return (record.a, record.b)
    return record.items if isinstance(record, PreferenceList) else (record.item,)


def import_manifest(
    store: LabelStore, path: str | Path, source: str = "import", media_root: MediaRoot = None
) -> list[int]:
    """Create one task per record of a JSONL manifest (pairs, lists, ratings of media files); returns task ids.

    All or nothing: the file is validated whole first (every media path must resolve inside the media root, the
    manifest's folder unless ``media_root`` is given, and decode as an image or probe as a video), then every task
    is written in one transaction, so a bad file adds nothing.

    Raises:
        DataError: the manifest's problems, each with its line and field.
        StoreError: a record without media files (feature vectors).
    """
    records = read_jsonl_manifest(path, check_media=True, media_root=media_root)
    problems = [
        f"record {record.id!r}: holds feature vectors or bytes; labelling tasks need media files"
        for record in records
        if not all(isinstance(item, str) for item in _items(record))
    ]
    if problems:
        raise DataError(path, problems)
    kinds = {PreferencePair: "pair", PreferenceList: "list", Rating: "rating"}
    return store.add_tasks([(kinds[type(r)], list(_items(r)), r.prompt, source) for r in records])


def import_pickapic(
    store: LabelStore,
    path: str | Path,
    media_dir: str | Path,
    ties: str = "keep",
    annotator: str | None = None,
    media_root: MediaRoot = None,
) -> list[int]:
    """Create pair tasks from a Pick-a-Pic-style Parquet; images held as bytes are written to ``media_dir``.

    Image bytes are stored once per content (file name = SHA-256), so re-importing adds no duplicate media. With
    ``annotator``, the file's own labels are imported too, attributed to that (existing) annotator: label_0 = 1 →
    choice 0, 0 → choice 1, 0.5 → tie. Image paths must resolve inside ``media_root`` (default: the file's folder).
    Tasks and labels are written in one transaction after every row was checked.
    """
    import hashlib
    import uuid

    from mmpref.data import read_pickapic_parquet
    from mmpref.data.io import atomic_write

    pairs = read_pickapic_parquet(path, ties=ties, media_root=media_root)  # checks every row and image first
    annotator_id = None
    if annotator is not None:
        with store.engine.connect() as conn:
            annotator_id = conn.execute(annotators.select().where(annotators.c.name == annotator)).first()
        if annotator_id is None:
            raise StoreError(f"unknown annotator {annotator!r}; create them with `mmpref label annotator`")
        annotator_id = annotator_id.id
    media_dir = Path(media_dir)
    specs, answers = [], []
    for pair in pairs:
        paths = []
        for item in (pair.a, pair.b):
            if isinstance(item, bytes):
                target = media_dir / f"{hashlib.sha256(item).hexdigest()}.img"
                if not target.exists():  # content-addressed: a file left by a failed import is the same file
                    with atomic_write(target, "wb") as handle:
                        handle.write(item)
                item = target
            paths.append(item)
        specs.append(("pair", paths, pair.prompt, f"pickapic:{pair.id}"))
        choice = "tie" if pair.label == 0.5 else (0 if pair.label > 0.5 else 1)
        label_uuid = f"pickapic-{uuid.uuid4().hex}"  # the task id is not known before the transaction
        answers.append(None if annotator_id is None else (annotator_id, {"choice": choice}, label_uuid))
    return store.add_tasks(specs, answers)
