"""The benchmark's lean HTTP client against a real HTTP server (uvicorn on 127.0.0.1):
Content-Length and chunked bodies, keep-alive, a server that closes, errors as errors."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn

from pipeline.testing.rawhttp import RawHTTPClient, RawHTTPError


async def _app(scope, receive, send):
    """POST /echo: the JSON body back with Content-Length; /chunked: the same, chunked;
    /close: answers with Connection: close."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path.endswith("/chunked"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        half = len(body) // 2
        await send({"type": "http.response.body", "body": body[:half], "more_body": True})
        await send({"type": "http.response.body", "body": body[half:]})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-count", str(len(body)).encode())]
    if path.endswith("/close"):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 201 if path.endswith("/close") else 200,
                "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def base_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/p"
    server.should_exit = True
    thread.join(timeout=10)


def test_bodies_headers_keep_alive_and_reconnect(base_url):
    async def run():
        payload = {"query": "ünïcode " * 50, "k": 10}
        async with RawHTTPClient(base_url) as client:
            first = await client.post("/echo", json=payload)
            writer = client._writer
            second = await client.post("/echo", json=payload)
            assert client._writer is writer            # the same connection, kept alive
            chunked = await client.post("/chunked", json=payload)
            closed = await client.post("/close", json=payload)
            assert client._writer is None              # the server said close: dropped
            again = await client.post("/echo", json=payload)  # reconnects
        return first, second, chunked, closed, again

    first, second, chunked, closed, again = asyncio.run(run())
    expected = {"query": "ünïcode " * 50, "k": 10}
    for r in (first, second, chunked, again):
        assert r.status_code == 200 and r.json() == expected
    assert closed.status_code == 201 and closed.json() == expected
    assert first.headers["x-count"] == str(len(json.dumps(expected, separators=(",", ":"),
                                                          ).encode()))


def test_refused_connection_and_bad_urls_are_errors():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]            # nothing listens here once closed

    async def run():
        async with RawHTTPClient(f"http://127.0.0.1:{port}") as client:
            await client.post("/x", json={})

    with pytest.raises(RawHTTPError, match="connect"):
        asyncio.run(run())
    with pytest.raises(ValueError, match="only http"):
        RawHTTPClient("https://example.com")
