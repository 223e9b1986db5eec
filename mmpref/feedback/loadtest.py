"""Load and crash test of the labelling server on loopback: concurrent annotators, a SIGKILL mid-run, a restart.

Each annotator thread labels its tasks through the HTTP API (``GET /api/next``, ``POST /api/labels``) and retries
a failed post with the *same* ``label_uuid`` until it is acknowledged, as the web page does. Halfway through, the
server process is killed with SIGKILL and started again on the same port. Afterwards the store is checked: every
acknowledged label is present, no label is stored twice, every annotator labelled each task once.

Only 127.0.0.1 is ever contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from mmpref.feedback.store import LabelStore


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def app_in_thread(store: LabelStore, timeout_s: float = 20.0) -> Iterator[str]:
    """Serve the labelling app for ``store`` from a thread of this process on a free loopback port; yields its URL.

    For tests and scripts that drive the app through its HTTP API or a browser; the server stops on exit.
    """
    import uvicorn

    from mmpref.feedback.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def start_server(db: Path, port: int, timeout_s: float = 30.0) -> subprocess.Popen:
    """Start ``mmpref label serve`` in a child process and wait until it answers."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mmpref.cli",
            "label",
            "--db",
            str(db),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server on port {port} did not start within {timeout_s} s")


@dataclass
class AnnotatorRun:
    """What one simulated annotator did."""

    name: str
    token: str
    acknowledged: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    retries: int = 0
    errors: list[str] = field(default_factory=list)


def _annotate(run: AnnotatorRun, base: str, labels: int, deadline: float) -> None:
    headers = {"Authorization": f"Bearer {run.token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10.0) as client:
        while len(run.acknowledged) < labels and time.monotonic() < deadline:
            try:
                nxt = client.get("/api/next").json()
            except (httpx.TransportError, ValueError):
                run.retries += 1
                time.sleep(0.05)
                continue
            if nxt.get("done"):
                run.errors.append("ran out of tasks")
                return
            body = {
                "task_id": nxt["task"]["id"],
                "label_uuid": uuid.uuid4().hex,
                "answer": {"choice": 0},
                "response_ms": 1.0,
            }
            while time.monotonic() < deadline:  # the same label_uuid until acknowledged
                start = time.perf_counter()
                try:
                    response = client.post("/api/labels", json=body)
                except httpx.TransportError:
                    run.retries += 1
                    time.sleep(0.05)
                    continue
                if response.status_code == 200:
                    run.latencies_s.append(time.perf_counter() - start)
                    run.acknowledged.append(body["label_uuid"])
                    break
                run.errors.append(f"{response.status_code}: {response.text[:200]}")
                return


def run_load_test(
    folder: Path, annotators: int = 20, labels_each: int = 200, kill: bool = True, time_limit_s: float = 600.0
) -> dict:
    """Run the test in ``folder`` (a fresh store); returns the figures and the integrity checks."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "load.sqlite"
    store = LabelStore(db)
    image = folder / "item.png"
    Image.new("RGB", (8, 8), (100, 150, 200)).save(image)
    other = folder / "other.png"
    Image.new("RGB", (8, 8), (200, 150, 100)).save(other)
    for _ in range(labels_each):
        store.add_task("pair", [image, other])
    runs = [AnnotatorRun(f"annotator{i}", store.add_annotator(f"annotator{i}")) for i in range(annotators)]
    store.engine.dispose()
    port = free_port()
    server = start_server(db, port)
    deadline = time.monotonic() + time_limit_s
    threads = [
        threading.Thread(target=_annotate, args=(run, f"http://127.0.0.1:{port}", labels_each, deadline))
        for run in runs
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    killed_at = None
    if kill:
        total = annotators * labels_each
        while sum(len(r.acknowledged) for r in runs) < total // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed_at = sum(len(r.acknowledged) for r in runs)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        server = start_server(db, port)
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
    elapsed = time.perf_counter() - started
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)

    check = LabelStore(db)
    stored = check.labels()
    stored_uuids = [lb.label_uuid for lb in stored]
    acknowledged = [u for r in runs for u in r.acknowledged]
    per_serving = {(lb.task_id, lb.annotator_id, lb.repeat) for lb in stored}
    latencies = np.array([t for r in runs for t in r.latencies_s])
    return {
        "annotators": annotators,
        "labels_each": labels_each,
        "acknowledged": len(acknowledged),
        "stored": len(stored),
        "acknowledged_missing": len(set(acknowledged) - set(stored_uuids)),
        "stored_twice": len(stored_uuids) - len(set(stored_uuids)),
        "task_labelled_twice_by_one_annotator": len(stored) - len(per_serving),
        "stored_but_not_acknowledged": len(set(stored_uuids) - set(acknowledged)),
        "killed_after_acknowledged": killed_at,
        "client_retries": sum(r.retries for r in runs),
        "errors": [e for r in runs for e in r.errors][:10],
        "post_latency_p50_ms": float(np.percentile(latencies, 50) * 1e3) if len(latencies) else None,
        "post_latency_p95_ms": float(np.percentile(latencies, 95) * 1e3) if len(latencies) else None,
        "labels_per_s": len(acknowledged) / elapsed,
        "elapsed_s": elapsed,
    }
