"""A lean HTTP/1.1 client for latency benchmarks: one keep-alive connection, asyncio streams.

httpx spent 2.1-2.6 ms of CPU per request on this 2-core box (BENCHMARKS §14, against 0.56 ms
for this client), about as much as the server's own per-request work, and the client shares
the cores with the server it measures.
This client does only what a benchmark of ``POST /search`` needs: write the request, read the
status line, the headers and a ``Content-Length`` or chunked body. No redirects, no TLS, no
proxies, no cookies. A response the client cannot parse is an error (`RawHTTPError`), never a
silent retry.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit


_dumps = json.dumps     # `post` takes a ``json`` keyword, as httpx's does


class RawHTTPError(Exception):
    """The connection failed or the response was not HTTP/1.1 this client understands."""


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]          # names lower-cased; a repeated header keeps the last value
    content: bytes

    def json(self):
        return json.loads(self.content)


class RawHTTPClient:
    """``async with RawHTTPClient("http://127.0.0.1:8000/prefix") as c:
    await c.post("/search", json={...})`` (the call shape of httpx's, so one loop drives both).

    One request at a time per client (one connection, reopened when the server closes it).
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host[:port][/prefix] URLs, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "RawHTTPClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None

    async def post(self, path: str, json) -> RawResponse:
        body = _dumps(json, separators=(",", ":")).encode("utf-8")
        head = (f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        return await asyncio.wait_for(self._exchange(head.encode("ascii") + body), self.timeout)

    async def _exchange(self, request: bytes) -> RawResponse:
        if self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                raise RawHTTPError(f"connect {self.host}:{self.port}: {exc}") from exc
        try:
            self._writer.write(request)
            response = await self._read_response()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.close()
            raise RawHTTPError(f"{type(exc).__name__}: {exc}") from exc
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def _read_response(self) -> RawResponse:
        reader = self._reader
        status_line = (await reader.readuntil(b"\r\n")).decode("latin-1")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {status_line!r}")
        status = int(rest.split(" ", 1)[0])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":   # trailers
                        pass
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            content = b"".join(chunks)
        elif "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        else:
            raise ValueError("response without Content-Length or chunked encoding")
        return RawResponse(status, headers, content)
