"""The labelling web app: A/B pairs (keys, tie), drag-to-rank lists, 1-5 ratings, synced video playback.

Security model: every API call and every media request needs an annotator token (``Authorization: Bearer`` or the
HttpOnly cookie set by ``/api/login``); an annotator sees and writes only their own labels; files are served only
by integer media id from the store's registered paths, never by a path from the request, and only when the file
passed the store's media check (an image or a video, see :mod:`mmpref.data.media`) and still has the checked
type at its checked, symlink-free path (ids that fit no SQL integer are 404); request targets with
``..``, backslashes or absolute-path tricks are refused before routing; request bodies over ``max_body_bytes`` are
refused (413) whether or not they announce their length.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from mmpref.data.media import sniff_mime
from mmpref.feedback.store import MAX_ID, LabelStore, StoreError, Task

COOKIE = "mmpref_token"


class LoginBody(BaseModel):
    """``POST /api/login``."""

    token: str = Field(min_length=8, max_length=128)


class LabelBody(BaseModel):
    """``POST /api/labels``: one answer to one task, with a client-made id that makes retries safe."""

    task_id: int = Field(ge=1, le=MAX_ID)
    label_uuid: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    answer: dict[str, Any]
    response_ms: float | None = Field(default=None, ge=0, lt=1e9)
    repeat: bool = False


class _GuardMiddleware:
    """Refuse suspicious request targets (400) and oversized bodies (413), before any route runs."""

    def __init__(self, app: Any, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path", scope["path"].encode()) + b"?" + scope.get("query_string", b"")
        lowered = raw.lower()
        if any(bad in lowered for bad in (b"..", b"%2e%2e", b"\\", b"%5c", b"//", b"%2f%2f", b"%00")):
            await JSONResponse({"detail": "path traversal refused"}, status_code=400)(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and int(length) > self.max_body_bytes:
            await JSONResponse({"detail": "request body too large"}, status_code=413)(scope, receive, send)
            return
        # Read the whole body first (it is small by contract), counting as it streams in, then replay it: a body
        # without Content-Length cannot slip past the limit, and nothing reaches a route before it is checked.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > self.max_body_bytes:
                await JSONResponse({"detail": "request body too large"}, status_code=413)(scope, receive, send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _task_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "prompt": task.prompt,
        "media": [{"id": m["id"], "kind": m["kind"], "url": f"/media/{m['id']}"} for m in task.media],
    }


def create_app(store: LabelStore, max_body_bytes: int = 64 * 1024) -> FastAPI:
    """The FastAPI app over one label store."""
    app = FastAPI(title="mmpref labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    page = resources.files("mmpref.feedback").joinpath("static/index.html").read_text(encoding="utf-8")

    def annotator(request: Request) -> tuple[int, str]:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        found = store.annotator_for_token(token)
        if found is None:
            raise HTTPException(status_code=401, detail="missing or unknown annotator token")
        return found

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.post("/api/login")
    def login(body: LoginBody, response: Response) -> dict[str, str]:
        found = store.annotator_for_token(body.token)
        if found is None:
            raise HTTPException(status_code=401, detail="unknown annotator token")
        response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict")
        return {"name": found[1]}

    @app.get("/api/me")
    def me(who: tuple[int, str] = Depends(annotator)) -> dict[str, Any]:
        return {"name": who[1], "progress": store.progress(who[0])}

    @app.get("/api/next")
    def next_task(repeat: bool = False, who: tuple[int, str] = Depends(annotator)) -> dict[str, Any]:
        task = store.next_task(who[0], repeat=repeat)
        return {"done": True} if task is None else {"done": False, "task": _task_json(task)}

    @app.post("/api/labels")
    def add_label(body: LabelBody, who: tuple[int, str] = Depends(annotator)) -> dict[str, Any]:
        try:
            label, created = store.add_label(
                who[0], body.task_id, body.answer, body.label_uuid, body.response_ms, repeat=body.repeat
            )
        except StoreError as err:
            status = 409 if "already" in str(err) else 422
            raise HTTPException(status_code=status, detail=str(err)) from None
        return {"id": label.id, "created": created, "progress": store.progress(who[0])}

    @app.get("/api/labels")
    def my_labels(who: tuple[int, str] = Depends(annotator)) -> list[dict[str, Any]]:
        return [
            {
                "id": lb.id,
                "task_id": lb.task_id,
                "answer": lb.answer,
                "label_uuid": lb.label_uuid,
                "response_ms": lb.response_ms,
                "created_at": lb.created_at,
            }
            for lb in store.labels(who[0])
        ]

    @app.get("/media/{media_id}")
    def media_file(media_id: int, who: tuple[int, str] = Depends(annotator)) -> FileResponse:
        row = store.media_row(media_id)  # None for an unknown id, or one no SQL integer holds
        if row is None or row.mime is None:  # unknown, or registered by an older store and failing the check
            raise HTTPException(status_code=404, detail="no such media")
        path = Path(row.path)
        try:  # still the file that passed the check: no symlink put in its way, a regular file, the same type
            same = path.resolve() == path and path.is_file()
            if same:
                with open(path, "rb") as handle:
                    same = sniff_mime(handle.read(64)) == row.mime
        except (OSError, RuntimeError):
            same = False
        if not same:
            raise HTTPException(status_code=404, detail="media changed since it was registered; re-import it")
        return FileResponse(path, media_type=row.mime)

    app.add_middleware(_GuardMiddleware, max_body_bytes=max_body_bytes)
    return app
