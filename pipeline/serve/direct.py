"""The ingress replica's own HTTP server (``direct_port``): requests skip Ray Serve's request path.

Through Serve, a request goes client -> proxy actor -> replica (or, with Ray's direct ingress,
through Serve's wrapper inside the replica) -> FastAPI -> handler. On 2 cores that path cost
1.4 ms of a 7 ms served p50 at 1M documents, against 0.18 ms for bare uvicorn (BENCHMARKS.md
§14). Here each ingress replica (either topology) runs uvicorn itself, on the replica's
user-code event loop (the loop its handlers and micro-batcher run on), with a small ASGI app that
routes each path straight to the replica's handler method: ``POST {prefix}/search``,
``GET {prefix}/healthz``, ``/stats``, ``/metrics``, ``/openapi.json``, ``/docs`` and
``POST {prefix}/admin/reload``.

The handlers are the same methods FastAPI calls, so checks, limits, errors and Server-Timing are
identical on both ports; errors render as FastAPI renders them (``{"detail": ...}``). Each
replica binds the first free port of ``direct_port .. direct_port + ingress_replicas - 1`` (a
replaced replica waits for its predecessor's port). Ray Serve does not see these requests: its
request metrics and autoscaling count the Serve port only; the endpoint's own ``/metrics``
counts both. `lsr serve` answers its ``--port`` this way (Serve's proxy only with
``--serve-port``); a Serve config (`cluster/serve.yaml`) sets ``direct_port`` to do the same.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import time
from typing import Any, Awaitable, Callable

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger(__name__)

ARRIVED = "lsr.arrived"
"""ASGI scope key: the request's arrival in the app (`time.perf_counter`); the ``route`` stage of
Server-Timing starts here. Set by this server's app and by the Serve app's outermost middleware."""

BIND_WAIT_S = 30.0
"""How long a starting replica waits for a port of its range to become free (a replaced
replica's predecessor may still hold one while it stops)."""

SHUTDOWN_GRACE_S = 10.0
"""How long a stopping server lets requests it already accepted finish."""

Handler = Callable[[Request], Awaitable[Any]]


def error_response(exc: Exception) -> JSONResponse:
    """An HTTP or validation error rendered as the Serve app renders it: ``{"detail": ...}``."""
    if isinstance(exc, RequestValidationError):
        return validation_response(exc)
    if isinstance(exc, HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)
    raise TypeError(f"not an HTTP error: {type(exc).__name__}")


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 with the location, message and type of each error, never the input itself (it may
    be a non-finite number or bytes that are not UTF-8, which no JSON body can carry)."""
    detail = [{"loc": safe_json(list(e.get("loc", ()))), "msg": safe_json(e.get("msg", "")),
               "type": safe_json(e.get("type", ""))} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def safe_json(value: Any) -> Any:
    """A JSON-renderable copy of an error detail: finite numbers, str, lists, dicts."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [safe_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): safe_json(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class DirectApp:
    """Pure ASGI app: a fixed table of (method, path) -> handler, nothing else on the way."""

    def __init__(self, routes: dict[str, dict[str, Handler]], not_found_hint: str) -> None:
        self.routes = routes                  # path -> method -> handler
        self.hint = not_found_hint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":           # lifespan is off; websockets are not served
            return
        scope[ARRIVED] = time.perf_counter()
        methods = self.routes.get(scope["path"])
        if methods is None:
            response = JSONResponse({"detail": f"Not Found: {self.hint}"}, status_code=404)
        elif scope["method"] not in methods:
            response = JSONResponse({"detail": "Method Not Allowed"}, status_code=405,
                                    headers={"Allow": ", ".join(sorted(methods))})
        else:
            try:
                response = await methods[scope["method"]](Request(scope, receive))
            except (HTTPException, RequestValidationError) as exc:
                response = error_response(exc)
            except Exception:  # noqa: BLE001 - one request fails, the server keeps answering
                log.exception("direct port: %s %s failed", scope["method"], scope["path"])
                response = JSONResponse({"detail": "internal error"}, status_code=500)
            if not isinstance(response, Response):
                response = JSONResponse(response)
        await response(scope, receive, send)


def bind_first_free(host: str, ports: range, wait_s: float = BIND_WAIT_S) -> socket.socket:
    """A listening socket on the first port of ``ports`` that is free; retried until
    ``wait_s`` has passed (ports held by replicas that are stopping free up)."""
    deadline = time.monotonic() + wait_s
    while True:
        for port in ports:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            # SO_REUSEADDR: a port whose last connections are in TIME_WAIT is free to bind;
            # a port with a live listener is not (no SO_REUSEPORT: one replica per port).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.listen(2048)
            sock.setblocking(False)
            return sock
        if time.monotonic() >= deadline:
            raise RuntimeError(f"direct port: every port of {ports.start}..{ports.stop - 1} on "
                               f"{host} is in use (another server, or more ingress replicas "
                               f"than ports)")
        time.sleep(0.5)


def check_ports_free(host: str, ports: range) -> None:
    """Raise `RuntimeError` naming the first port of ``ports`` that cannot be bound on
    ``host`` now (checked before an endpoint starts, so a clash fails at once)."""
    for port in ports:
        try:
            bind_first_free(host, range(port, port + 1), wait_s=0).close()
        except RuntimeError:
            raise RuntimeError(f"port {port} on {host} is in use") from None


class DirectServer:
    """uvicorn serving a `DirectApp` on a bound socket, as a task of the running event loop."""

    def __init__(self, app: DirectApp, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        self.port = sock.getsockname()[1]
        # log_config=None: leave the replica's logging as Ray set it up.
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None,
                                log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                                server_header=False)
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():              # failed to start: raise its error here
                self.task.result()
                raise RuntimeError("direct port: the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    @property
    def failed(self) -> BaseException | None:
        """Why the server stopped on its own (None while it runs or after `stop`)."""
        if self.task is None or not self.task.done() or self.server.should_exit:
            return None
        if self.task.cancelled():
            return RuntimeError("direct port: the HTTP server was cancelled")
        return self.task.exception() or RuntimeError("direct port: the HTTP server stopped")

    async def stop(self) -> None:
        """Stop accepting, let accepted requests finish (at most `SHUTDOWN_GRACE_S`), close."""
        if self.task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), SHUTDOWN_GRACE_S + 5)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("direct port %d: stop: %s: %s", self.port, type(exc).__name__, exc)
        self.sock.close()


async def start_direct_server(routes: dict[str, dict[str, Handler]], host: str, ports: range,
                              not_found_hint: str) -> DirectServer:
    """Bind the first free port of ``ports`` and serve ``routes`` there."""
    sock = await asyncio.to_thread(bind_first_free, host, ports)
    server = DirectServer(DirectApp(routes, not_found_hint), sock)
    await server.start()
    log.info("direct port: answering on %s:%d", host, server.port)
    return server
