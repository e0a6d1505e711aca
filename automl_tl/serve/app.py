"""The Starlette app: POST /predict (multipart uploads, field `file`, repeated for several),
GET /health, GET /openapi.json.

An upload is read as it streams in and refused (413) once the body passes the limit, before
the rest arrives; images are decoded in a small thread pool, never on the event loop, and
classified by the micro-batcher. A bad request gets a 4xx and {"error": "<one line>"}; the
server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..core.errors import AutoTLError
from .batcher import MicroBatcher
from .openapi import openapi_spec

__all__ = ["create_app", "FIELD", "MAX_FILES"]

FIELD = "file"  # the form field of the images
MAX_FILES = 256  # files in one request
_MB = 1024 * 1024
# python-multipart logs a warning per malformed body; the client's 400 already says it
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


class UploadRefused(Exception):
    """A request the server will not process: HTTP `status` and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line[:300] or "error"


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


class _Counters:
    """What /health reports about POST /predict requests: all, answered 200, refused (4xx),
    failed (5xx), and the images the model's OOD output judged and flagged (the batcher
    counts batches and images)."""

    def __init__(self):
        self.started = time.time()
        self.requests = self.ok = self.rejected = self.failed = 0
        self.ood_flagged = self.ood_checked = 0

    def to_dict(self) -> dict:
        return {
            "uptime_seconds": round(time.time() - self.started, 1),
            "requests": self.requests,
            "ok": self.ok,
            "rejected": self.rejected,
            "failed": self.failed,
            "ood_flagged": self.ood_flagged,
            "ood_checked": self.ood_checked,
        }


# ---------------------------------------------------------------------- reading a request
def _top_k(request: Request) -> int:
    raw = request.query_params.get("top_k", "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UploadRefused(400, f"top_k={raw!r} is not allowed; use a whole number at least 1")
    return value


async def _bounded(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks; UploadRefused(413) as soon as more than `limit` bytes came."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise UploadRefused(413, _too_large(limit))
            yield chunk
    except ClientDisconnect:
        raise UploadRefused(400, "the client closed the connection mid-body") from None


def _too_large(limit: int) -> str:
    return f"request body above the upload limit of {limit / _MB:g} MB (--max-upload-mb)"


async def _uploads(request: Request, limit: int) -> list[tuple[str | None, bytes]]:
    """(filename, bytes) of every `file` part, in order; UploadRefused for anything else."""
    kind = request.headers.get("content-type", "")
    media = kind.split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        got = f"got {media}" if media else "no Content-Type"
        raise UploadRefused(
            415, f"send multipart/form-data with each image in field '{FIELD}' ({got})"
        )
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise UploadRefused(413, _too_large(limit))
    parser = MultiPartParser(
        request.headers, _bounded(request, limit), max_files=MAX_FILES, max_part_size=64 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise UploadRefused(400, f"malformed multipart body: {e.message}") from None
    try:
        items = form.multi_items()
        files = [value for name, value in items if name == FIELD]
        if not files:
            names = sorted({name for name, _ in items})
            got = f"got {', '.join(map(repr, names))}" if names else "empty or cut short"
            raise UploadRefused(
                400, f"no field '{FIELD}' in the form ({got}); send each image as '{FIELD}'"
            )
        out = []
        for value in files:
            if not isinstance(value, UploadFile):
                raise UploadRefused(400, f"field '{FIELD}' must be a file upload, not text")
            out.append((value.filename, await value.read()))
        return out
    finally:
        await form.close()


# ---------------------------------------------------------------------- the app
def create_app(
    predictor,
    *,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    decode_threads: int | None = None,
) -> Starlette:
    """The server of `predictor` (an automl_tl.export.predictor.Predictor, or anything with
    its `decode`, `predict_arrays`, `classes` and `path`)."""
    limit = int(max_upload_mb * _MB)
    batcher = MicroBatcher(predictor.predict_arrays, max_batch, max_wait_ms / 1000)
    counters = _Counters()
    model_path = str(Path(predictor.path).resolve())
    session = getattr(predictor, "session", None)  # 0: onnxruntime's default
    threads = session.get_session_options().intra_op_num_threads if session else None
    pools: list[ThreadPoolExecutor] = []
    spec = openapi_spec(__version__, list(predictor.classes), max_upload_mb, MAX_FILES)

    async def decode(name: str | None, data: bytes):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pools[0], predictor.decode, data)
        except AutoTLError as e:
            raise UploadRefused(422, f"file {name!r}: {e}") from None

    async def predict(request: Request) -> Response:
        counters.requests += 1
        top_k = _top_k(request)
        uploads = await _uploads(request, limit)
        arrays = await asyncio.gather(*(decode(name, data) for name, data in uploads))
        try:
            records = await batcher.predict(list(arrays), top_k)
        except Exception as e:
            counters.failed += 1
            print(f"automl-tl serve: prediction failed: {_one_line(e)}", file=sys.stderr)
            return _error(500, f"prediction failed: {e}")
        counters.ok += 1
        for r in records:
            if r.get("ood") is not None:
                counters.ood_checked += 1
                counters.ood_flagged += bool(r["ood"])
        out = [{"filename": name, **r} for (name, _), r in zip(uploads, records, strict=True)]
        return JSONResponse({"predictions": out})

    async def health(request: Request) -> Response:
        status = "ok" if batcher.alive else "error: the batch worker stopped"
        body = {
            "status": status,
            "model": model_path,
            "classes": list(predictor.classes),
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "max_upload_mb": max_upload_mb,
            "onnxruntime_threads": threads,
            "counters": {**counters.to_dict(), **batcher.stats()},
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def refused(request: Request, exc: UploadRefused) -> Response:
        counters.rejected += 1
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: HTTPException) -> Response:  # 404, 405
        return _error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    async def crashed(request: Request, exc: Exception) -> Response:
        counters.failed += 1
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        workers = decode_threads or max(1, min(4, os.cpu_count() or 1))
        pools.append(ThreadPoolExecutor(workers, thread_name_prefix="automl-tl-decode"))
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            pools.pop().shutdown(wait=True)

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={UploadRefused: refused, HTTPException: http_error, Exception: crashed},
        lifespan=lifespan,
    )
    app.state.batcher, app.state.counters = batcher, counters
    return app
