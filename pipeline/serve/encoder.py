"""QueryEncoder: the SPLADE query encoder of an index's manifest, batched across requests.

Concurrent requests reaching one replica within ``batch_wait_timeout_s`` are collected
(`@serve.batch`) and encoded in one worker-thread call, one query at a time through the
single-query fast path (no padding: the same vectors as in process); each gets its own rows. The encoder is rebuilt from the
manifest's encoder settings (`pipeline.encode.query.query_encoder`), exactly as the
in-process `ShardedIndex.encoder()` does, so served and in-process queries are the same vectors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from pipeline.serve.protocol import QueryBatch

log = logging.getLogger(__name__)


def load_query_encoder(settings: dict[str, Any], threads: int | None = None):
    """The query encoder of an index manifest's encoder settings (`pipeline.encode.query.
    query_encoder`: static weights for an inference-free model, else the single-query fast
    path), torch limited to `threads`. Thread-safe: one encode at a time."""
    from pipeline.encode.query import query_encoder, set_torch_threads

    if threads:
        set_torch_threads(threads)
    return query_encoder(settings, device="cpu")


def encode_batch(encoder, texts: list[str]) -> QueryBatch:
    return QueryBatch.from_csr(encoder.encode_queries(list(texts)))


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64,
                  health_check_period_s=5)
class QueryEncoder:
    def __init__(self, settings: dict[str, Any], threads: int = 1, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.002) -> None:
        self.encoder = load_query_encoder(settings, threads)
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)
        encode_batch(self.encoder, ["warm up"])  # first forward pass allocates; not on a request

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def encode(self, requests: list[list[str]]) -> list[QueryBatch]:
        """Each request is a list of query texts; all are encoded in one worker-thread call."""
        texts = [t for request in requests for t in request]
        # In a worker thread: the replica's event loop keeps collecting the next batch.
        batch = await asyncio.to_thread(encode_batch, self.encoder, texts)
        out, start = [], 0
        for request in requests:
            out.append(batch.rows(start, start + len(request)))
            start += len(request)
        return out
