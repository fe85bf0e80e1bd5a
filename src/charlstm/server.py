"""An OpenAI-compatible HTTP server over a `CharModel`: /v1/completions (streaming or not),
/v1/models, /health and a playground page at /. Needs the [serve] extra (FastAPI, uvicorn).

Requests are checked by `protocol.parse_request`, then each choice becomes a `scheduler.Stream`;
the scheduler's thread steps all of them together and hands events back to the event loop, which
only waits and writes what `protocol.collect` and `protocol.sse` make of them. Every failure a
client can cause is an OpenAI-style JSON error with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .api import CharModel
from .errors import CharLSTMError
from .protocol import ApiError, collect, parse_request, sse
from .scheduler import Event, Scheduler, Stream, deliver_directly

MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 4096
    max_choices: int = 16
    max_prompt_chars: int = 16_384
    max_body_bytes: int = MAX_BODY_BYTES


def error_response(error: ApiError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status)


def create_app(
    model: CharModel,
    *,
    api_key: str | None = None,
    max_batch: int = 64,
    max_tokens_cap: int = 4096,
    limits: Limits | None = None,
    model_id: str | None = None,
) -> FastAPI:
    """The ASGI app; `serve` runs it with uvicorn. Generation starts its thread on first use and
    stops when the app shuts down."""
    limits = limits or Limits(max_tokens=max_tokens_cap)
    name = model_id or model_name(model)
    scheduler = Scheduler(model.model, model.vocab, max_batch, deliver=deliver_to_loops)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.on_ready is not None:
            app.state.on_ready()
        yield
        scheduler.stop()

    app = FastAPI(title="charlstm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.on_ready = scheduler, None

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {error.detail}"
        return error_response(ApiError(error.status_code, message, kind))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal error: {type(error).__name__}", "server_error"))

    def check_key(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if api_key is not None and not secrets.compare_digest(given, f"Bearer {api_key}".encode()):
            message = "a wrong or missing API key: send `Authorization: Bearer KEY`"
            raise ApiError(401, message, "authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": name,
            "active_streams": len(scheduler.active),
            "waiting_streams": scheduler.waiting.qsize(),
            "largest_batch": scheduler.largest_batch,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        facts = {k: v for k, v in model.info().items() if k != "path"}  # no server paths to clients
        card = {"id": name, "object": "model", "created": 0, "owned_by": "charlstm", **facts}
        return {"object": "list", "data": [card]}

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = resources.files("charlstm").joinpath("static/playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{MODEL}}", html.escape(name)))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        check_key(request)
        body = await read_body(request, limits.max_body_bytes)
        job = parse_request(body, model, limits)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        header = {"id": completion_id, "object": "text_completion", "created": created, "model": name}
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        streams = [
            Stream(i, ids, job.max_tokens, events.put_nowait, context=loop, **job.sampling(i))
            for i, ids in enumerate(job.prime_ids)
        ]
        for stream in streams:
            scheduler.submit(stream)
        if job.request.stream:
            return StreamingResponse(
                sse(job, header, streams, events), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )  # fmt: skip
        try:
            return JSONResponse(await collect(job, header, streams, events))
        finally:
            for stream in streams:
                stream.cancel()

    return app


def deliver_to_loops(outbox: list[tuple[Stream, Event]]) -> None:
    """From the scheduler's thread: one wake-up of each event loop per step, not one per stream."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Event]]] = {}
    for stream, event in outbox:
        by_loop.setdefault(stream.context, []).append((stream, event))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            loop.call_soon_threadsafe(deliver_directly, items)


def model_name(model: CharModel) -> str:
    """The run folder's name for a run's best/last checkpoint, else the checkpoint folder's."""
    if model.path is None:
        return "charlstm"
    return model.path.parent.name if model.path.name in ("best", "last") else model.path.name


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return body


class _Server(uvicorn.Server):
    """Graceful stop on SIGTERM/Ctrl-C: stop accepting, give running streams `grace_s` seconds to
    finish, then end the rest with an error event and `[DONE]`, and exit 0 (uvicorn itself
    re-raises the signal after its shutdown, so the process would die by it)."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace_s: float) -> None:
        super().__init__(config)
        self.scheduler, self.grace_s = scheduler, grace_s

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            timer = threading.Timer(self.grace_s, self.scheduler.request_stop)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(
    model: CharModel,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api_key: str | None = None,
    max_batch: int = 64,
    max_tokens_cap: int = 4096,
    grace_s: float = 3.0,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop as `_Server` describes and return."""
    if max_batch < 1 or max_tokens_cap < 1:
        raise CharLSTMError(f"--max-batch, --max-tokens-cap must be 1 or more: {max_batch}, {max_tokens_cap}")
    app = create_app(model, api_key=api_key, max_batch=max_batch, max_tokens_cap=max_tokens_cap)
    if on_ready is not None:
        app.state.on_ready = lambda: on_ready(f"http://{host}:{port}/")
    check_address(host, port)
    # uvicorn's own limit is the backstop: connections still open after it are closed.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=grace_s + 5)
    _Server(config, app.state.scheduler, grace_s).run()


def check_address(host: str, port: int) -> None:
    """Fail with one clear line (not uvicorn's log and exit) when the port is taken or invalid."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        message = f"cannot listen on {host}:{port} ({reason}); choose another --host or --port"
        raise CharLSTMError(message) from None
