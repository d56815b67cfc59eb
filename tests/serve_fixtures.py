"""Fixtures and helpers of the endpoint tests: a real scifact index, Serve on 127.0.0.1.

The `serve_index` fixture is imported by tests/test_serve.py only (session fixtures imported
into two modules would be built twice); tests/test_serve_load.py imports the helpers.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port


@pytest.fixture(scope="session")
def serve_index(request) -> str:
    """Root of the session's scifact index (conftest `scifact_index`: the real job, 3 shards).

    Local runs only: LSR_TEST_CACHE=/dir with a copy of such an index under
    /dir/serve-scifact-index skips the build (delete it when the index format or the test
    collection changes: since 2026-12-05 it is scifact's first 1,500 documents).
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


@dataclass
class ConcurrentLoad:
    """N client threads sending requests concurrently, bounded in time and in count.

    ``make_request(client_no, i)`` returns ``(json_body, check)``; ``check(response_json)``
    returns None when the answer is right, else a description. Every outcome is recorded:
    transport errors, non-200 statuses, partial answers, generations outside ``generations``
    (when given), generations going backwards within one client, failed checks.
    `assert_clean` asserts there were none, and that enough requests were answered.
    """

    base_url: str
    make_request: Any
    clients: int = 8
    max_requests: int = 400
    max_seconds: float = 120.0
    path: str = "/search"
    headers: dict = field(default_factory=dict)
    generations: set | None = None
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    seen_generations: list[list[int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)
    _issued: int = 0

    def _next(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._issued >= self.max_requests:
                return None
            self._issued += 1
            return self._issued - 1

    def _run(self, client_no: int) -> None:
        seen: list[int] = []
        self.seen_generations.append(seen)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.base_url, timeout=60.0) as client:
            while time.monotonic() < deadline:
                i = self._next()
                if i is None:
                    return
                body, check = self.make_request(client_no, i)
                try:
                    r = client.post(self.path, json=body, headers=self.headers)
                except httpx.HTTPError as exc:
                    self._fail(f"request {i}: {type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    self._fail(f"request {i}: HTTP {r.status_code}: {r.text[:300]}")
                    continue
                answer = r.json()
                problems = []
                if answer.get("partial"):
                    problems.append(f"partial, missing {answer.get('missing_shards')}")
                generation = answer.get("generation")
                if self.generations is not None and generation not in self.generations:
                    problems.append(f"generation {generation} not in {sorted(self.generations)}")
                if seen and generation < seen[-1]:
                    problems.append(f"generation went back from {seen[-1]} to {generation}")
                seen.append(generation)
                if check is not None:
                    wrong = check(answer)
                    if wrong:
                        problems.append(wrong)
                with self._lock:
                    self.answered += 1
                for problem in problems:
                    self._fail(f"request {i}: {problem}")

    def _fail(self, message: str) -> None:
        with self._lock:
            self.failures.append(message)

    def __enter__(self) -> "ConcurrentLoad":
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                         for c in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.join()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=self.max_seconds + 120)
        assert not any(t.is_alive() for t in self._threads), "a load client never finished"

    def wait_for(self, n_answered: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        start = self.answered + len(self.failures)
        while self.answered + len(self.failures) - start < n_answered and time.monotonic() < deadline:
            time.sleep(0.05)

    def assert_clean(self, min_answered: int) -> None:
        assert self.failures == [], f"{len(self.failures)} failures: {self.failures[:10]}"
        assert self.answered >= min_answered, f"only {self.answered} requests answered"


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
