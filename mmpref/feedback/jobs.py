"""``mmpref label``: the labelling web app and its store, from the command line.

Every failure a user can cause (a bad manifest, media outside the media root or not media at all, a missing,
mistyped or corrupt store, nothing to export) ends with one message naming the file and the fix, and exit code 2;
nothing is written in that case (imports are one transaction; exports are atomic and never write an empty file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpref label", description="The labelling web app and its store.")
    db_help = "store: a SQLite file or a SQLAlchemy URL (default labels.sqlite)"
    parser.add_argument("--db", default="labels.sqlite", help=db_help)
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="serve the web app (127.0.0.1 by default); the store must exist")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    annotator = sub.add_parser("annotator", help="create an annotator and print their token")
    annotator.add_argument("name")
    imported = sub.add_parser("import", help="create tasks from a JSONL manifest or a Pick-a-Pic Parquet")
    imported.add_argument("manifest", help=".jsonl (pairs, lists, ratings of media files) or .parquet (Pick-a-Pic)")
    imported.add_argument("--media-dir", default="label_media", help="where Parquet image bytes are written")
    imported.add_argument("--labels-as", default=None, help="also import the file's labels as this annotator")
    imported.add_argument(
        "--media-root",
        action="append",
        default=None,
        help="folder the media may live in (repeatable; default: the manifest's folder); paths that resolve "
        "elsewhere, after symlinks, are refused",
    )
    exported = sub.add_parser("export", help="write all labels to .jsonl (all kinds) or .parquet (pairs)")
    exported.add_argument("out")
    for action in (serve, annotator, imported, exported):  # --db is accepted after the action too
        action.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    return parser


def run_label(argv: Sequence[str]) -> int:
    """``mmpref label``: the labelling web app and its store."""
    args = _parser().parse_args(argv)
    import sqlalchemy as sa

    from mmpref.data import DataError
    from mmpref.data.media import MediaError
    from mmpref.feedback.exchange import export_labels, import_manifest, import_pickapic
    from mmpref.feedback.store import LabelStore, StoreError

    store = None
    fresh = "://" not in args.db and not Path(args.db).exists()  # created by this run: removed again if it fails
    try:
        # read-only actions never create a store: a mistyped --db is an error, not an empty store
        store = LabelStore(args.db, create=args.action in ("annotator", "import"))
        if args.action == "serve":
            import uvicorn

            from mmpref.feedback.app import create_app

            print(f"mmpref labelling on http://{args.host}:{args.port}/  (store: {store.name})", flush=True)
            uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning")
        elif args.action == "annotator":
            print(store.add_annotator(args.name))
        elif args.action == "import":
            if Path(args.manifest).suffix.lower() == ".parquet":
                created = import_pickapic(
                    store, args.manifest, args.media_dir, annotator=args.labels_as, media_root=args.media_root
                )
            else:
                created = import_manifest(store, args.manifest, media_root=args.media_root)
            print(f"created {len(created)} tasks")
        else:
            if Path(args.out).is_dir():
                raise StoreError(f"{args.out}: is a folder; give a .jsonl or .parquet file to write")
            print(f"wrote {export_labels(store, args.out)}")
    except (StoreError, DataError, MediaError) as err:
        message = str(err)
    except sa.exc.SQLAlchemyError as err:  # e.g. a store damaged after it was opened, or a locked database
        message = f"{store.name if store else args.db}: the store failed ({getattr(err, 'orig', err)}); check the file"
    except OSError as err:  # writing the export or the Parquet media: permissions, a full disk
        message = f"{err.filename or ''}: {err.strerror or err}; check the path"
    else:
        return 0
    if fresh and store is not None:  # a failed first import leaves no empty store behind
        store.engine.dispose()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    print(f"mmpref label: {message}", file=sys.stderr)
    return 2
