"""Fixtures and helpers of the endpoint tests: a real scifact index, Serve on 127.0.0.1.

Imported by tests/test_serve.py only (session fixtures imported into two modules would be
built twice).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conftest import free_port


@pytest.fixture(scope="session")
def serve_index(request) -> str:
    """Root of the session's scifact index (conftest `scifact_index`: the real job, 3 shards).

    Local runs only: LSR_TEST_CACHE=/dir with a copy of such an index under
    /dir/serve-scifact-index skips the build (delete it when the index format changes).
    """
    cache = os.environ.get("LSR_TEST_CACHE")
    if cache and (Path(cache) / "serve-scifact-index" / "CURRENT.json").exists():
        return str(Path(cache) / "serve-scifact-index")
    root, _summary = request.getfixturevalue("scifact_index")
    return str(root)


def serve_http_port() -> int:
    """Start Serve's HTTP proxy on a free 127.0.0.1 port, or return the port it already has."""
    from ray import serve
    from ray.serve.context import _get_global_client

    try:
        details = _get_global_client().get_serve_details()
        return int(details["http_options"]["port"])
    except Exception:  # noqa: BLE001 - Serve not running yet
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        return port


def replica_actors(app: str) -> list:
    """Handles of the live replica actors of a Serve application (all its deployments)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#"
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["namespace"] == "serve" and a["name"].startswith(prefix))
    return [ray.get_actor(n, namespace="serve") for n in names]


@dataclass
class LoadLoop:
    """A client thread sending single-query searches back to back, recording every outcome."""

    client: httpx.Client
    path: str
    queries: list[str]
    headers: dict = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    generations: list[int] = field(default_factory=list)
    partial: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            query = self.queries[i % len(self.queries)]
            i += 1
            try:
                r = self.client.post(self.path, json={"query": query, "k": 10}, headers=self.headers)
            except httpx.HTTPError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self.statuses.append(r.status_code)
            if r.status_code == 200:
                body = r.json()
                self.generations.append(body["generation"])
                self.partial += bool(body["partial"])
            else:
                self.errors.append(f"{r.status_code}: {r.text[:300]}")

    def __enter__(self) -> "LoadLoop":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_for(self, n_requests: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        start = len(self.statuses)
        while len(self.statuses) - start < n_requests and time.monotonic() < deadline:
            time.sleep(0.05)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
