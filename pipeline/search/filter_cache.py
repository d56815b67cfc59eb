"""The per-index cache of filter bitsets: an LRU bounded in bytes.

A filter is evaluated once per shard into an `AllowedDocs` (mask, allowed rows, blocked
bitset); requests repeating a filter (the common case: a tenant, a language, a date window)
reuse them. Keyed by the filter's canonical JSON (`Filter.key`) and the shard's name, so one
cache may serve the shards of several generations.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from pipeline.index.allowed import AllowedDocs

DEFAULT_FILTER_CACHE_BYTES = 256 << 20
"""Default bound: 256 MiB. A shard's entry costs ~9.2 bytes a document (bool mask, 1 bit of
bitset, 8 bytes per *allowed* row): a 1M-document shard's filter allowing half of it is
~5 MB, so the default keeps ~50 such filters per 1M documents."""


class FilterCache:
    """LRU of `AllowedDocs` by (filter key, shard name), at most ``max_bytes`` in all; an
    entry larger than the bound is built and returned but not kept. Thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_FILTER_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[str, str], AllowedDocs] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, filter_key: str, shard: str, build: Callable[[], AllowedDocs]) -> AllowedDocs:
        key = (filter_key, shard)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        allowed = build()           # outside the lock: a mask over a large shard takes a while
        with self._lock:
            if key in self._entries or allowed.nbytes > self.max_bytes:
                return allowed
            self._entries[key] = allowed
            self.nbytes += allowed.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.nbytes -= old.nbytes
                self.evictions += 1
        return allowed

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self.nbytes,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}
