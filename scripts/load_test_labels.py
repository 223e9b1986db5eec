"""Load + crash test of the labelling server: 20 annotators × 200 labels on loopback, SIGKILL mid-run, restart.

    .venv/bin/python scripts/load_test_labels.py [--annotators 20] [--labels 200] [--out-dir runs/load_test]

Writes load_test.json and load_test.md (machine noted) and exits non-zero if any label was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mmpref.data.io import atomic_write
from mmpref.feedback.loadtest import run_load_test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL and restart")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/load_test"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_load_test(Path(tmp), args.annotators, args.labels, kill=not args.no_kill)
    result["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ok = (
        result["acknowledged_missing"] == 0
        and result["stored_twice"] == 0
        and result["task_labelled_twice_by_one_annotator"] == 0
        and result["acknowledged"] == args.annotators * args.labels
    )
    lines = [
        "# Labelling server load + crash test",
        "",
        f"machine: {result['machine']}",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in result.items() if key != "machine"]
    lines += ["", f"integrity: {'PASS' if ok else 'FAIL'}"]
    markdown = "\n".join(lines) + "\n"
    with atomic_write(args.out_dir / "load_test.json", "w") as handle:
        json.dump(result, handle, indent=2)
    with atomic_write(args.out_dir / "load_test.md", "w") as handle:
        handle.write(markdown)
    print(markdown)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
