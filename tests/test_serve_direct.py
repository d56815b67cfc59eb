"""The ingress replica's own HTTP server (`pipeline.serve.direct`), without Ray: real sockets,
real uvicorn, a real HTTP client."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from pipeline.serve.direct import ARRIVED, bind_first_free, start_direct_server


def _held_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_bind_takes_the_first_free_port_of_the_range():
    held = _held_listener()
    port = held.getsockname()[1]
    try:
        sock = bind_first_free("127.0.0.1", range(port, port + 2), wait_s=0)
        try:
            assert sock.getsockname()[1] == port + 1
        finally:
            sock.close()
    except RuntimeError:          # port + 1 happened to be taken by someone else
        pytest.skip("the port after a free one is in use on this machine")
    finally:
        held.close()


def test_bind_names_the_range_when_every_port_is_held():
    held = _held_listener()
    port = held.getsockname()[1]
    try:
        with pytest.raises(RuntimeError, match=f"every port of {port}..{port} on 127.0.0.1 is in use"):
            bind_first_free("127.0.0.1", range(port, port + 1), wait_s=0.6)
    finally:
        held.close()


def test_bind_waits_for_a_port_to_free_up():
    """A replaced replica's predecessor releases its port while the new one waits."""
    held = _held_listener()
    port = held.getsockname()[1]

    async def scenario():
        asyncio.get_running_loop().call_later(0.3, held.close)
        return await asyncio.to_thread(bind_first_free, "127.0.0.1", range(port, port + 1), 10.0)

    sock = asyncio.run(scenario())
    try:
        assert sock.getsockname()[1] == port
    finally:
        sock.close()


def test_direct_server_routes_renders_errors_and_drains_on_stop():
    """Routed handlers answer; a 404 names where the other routes are; 405 lists the allowed
    methods; HTTP and validation errors render as the Serve app renders them, a non-finite
    number included; a handler that crashes gets a 500 and the server keeps answering; `stop`
    lets an accepted request finish, then refuses new connections."""
    release = None

    async def search(request):
        body = await request.json()
        if body.get("fail") == "http":
            raise HTTPException(413, detail="too large")
        if body.get("fail") == "validation":
            raise RequestValidationError([{"loc": ("body", "heap_factor"), "type": "finite_number",
                                           "msg": "not finite", "input": float("nan")}])
        if body.get("fail") == "crash":
            raise ZeroDivisionError("boom")
        if body.get("slow"):
            await release.wait()
        arrived = request.scope[ARRIVED]
        return Response(b'{"ok":true,"arrived":%f}' % arrived, media_type="application/json")

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        routes = {"/api/search": {"POST": search},
                  "/api/healthz": {"GET": lambda request: _health()}}
        server = await start_direct_server(routes, "127.0.0.1", range(0, 1), "use the other port")
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            ok = await client.post("/api/search", json={})
            assert ok.status_code == 200 and ok.json()["ok"] is True
            assert (await client.get("/api/healthz")).json() == {"status": "ok"}
            missing = await client.get("/api/stats")
            assert missing.status_code == 404 and "use the other port" in missing.json()["detail"]
            wrong = await client.get("/api/search")
            assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
            http = await client.post("/api/search", json={"fail": "http"})
            assert (http.status_code, http.json()) == (413, {"detail": "too large"})
            invalid = await client.post("/api/search", json={"fail": "validation"})
            assert invalid.status_code == 422
            assert invalid.json()["detail"] == [{"loc": ["body", "heap_factor"], "msg": "not finite",
                                                 "type": "finite_number"}]
            crash = await client.post("/api/search", json={"fail": "crash"})
            assert (crash.status_code, crash.json()) == (500, {"detail": "internal error"})
            assert (await client.post("/api/search", json={})).status_code == 200
            assert server.failed is None

            slow = asyncio.ensure_future(client.post("/api/search", json={"slow": True}))
            await asyncio.sleep(0.2)                     # accepted, waiting in the handler
            stopping = asyncio.ensure_future(server.stop())
            await asyncio.sleep(0.3)
            assert not stopping.done()                   # the accepted request holds the stop
            release.set()
            answer = await slow
            assert answer.status_code == 200
            await stopping
        assert server.failed is None
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=base, timeout=2) as client:
                await client.get("/api/healthz")

    async def _health():
        return {"status": "ok"}

    asyncio.run(scenario())
