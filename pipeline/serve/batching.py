"""Micro-batching of concurrent requests inside one replica (an asyncio collector).

`MicroBatcher.submit(key, item)` queues an item; while a batch of the same key runs, the
items that arrive queue up and then run together as the next batch, ``run(items)`` once in
a worker thread; each caller gets its own result (or its own exception) back. A lone
request runs at once, so batching costs one client nothing and absorbs bursts of many.
The embedded ingress uses it to encode and search concurrent single queries as one batch:
one worker-thread hop, one encoder lock, one search call per shard for B queries.

``run`` must answer each item exactly as it would answer it alone (the embedded ingress
encodes every query on its own, no padding, and the blocked and exact kernels score each
query of a batch independently), so batching changes latency and throughput, never results.
Items of different keys (search parameters, route) are never batched together.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Hashable, Sequence

log = logging.getLogger(__name__)


class MicroBatcher:
    """Collects concurrent `submit` calls per key and runs them as batches.

    A key with no batch running starts one at once (no added latency for a lone request);
    requests arriving while it runs queue up and form the next batch, of at most
    ``max_size`` items, when it finishes (after ``wait_s`` more, if set). One batch per key
    runs at a time.

    ``run(items) -> results``: one result per item, in order; an item whose result is an
    exception instance has that exception raised to its caller. An exception raised by
    ``run`` itself goes to every caller of the batch.
    """

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_size: int,
                 wait_s: float = 0.0) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self._run = run
        self.max_size = max_size
        self.wait_s = wait_s
        self._queues: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
        self._drains: dict[Hashable, asyncio.Task] = {}
        self.batches = 0
        self.items = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((item, future))
        if key not in self._drains:
            self._drains[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _drain(self, key: Hashable) -> None:
        try:
            while self._queues.get(key):
                if self.wait_s and len(self._queues[key]) < self.max_size:
                    await asyncio.sleep(self.wait_s)
                queue = self._queues[key]
                batch = queue[:self.max_size]
                del queue[:self.max_size]
                await self._execute(batch)
        finally:
            self._drains.pop(key, None)
            if not self._queues.get(key):
                self._queues.pop(key, None)
            else:                       # cancelled with requests still queued: fail them
                for _, future in self._queues.pop(key):
                    if not future.done():
                        future.set_exception(RuntimeError("batcher stopped"))

    async def _execute(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        self.batches += 1
        self.items += len(items)
        try:
            results = await asyncio.to_thread(self._run, items)
            if len(results) != len(items):
                raise RuntimeError(f"batch of {len(items)} got {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if future.done():            # the caller went away (cancelled request)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
