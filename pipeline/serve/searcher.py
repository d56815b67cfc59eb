"""ShardSearcher: a Serve replica that holds one shard (or a run of shards) of one generation.

The class is bound once per shard group (``ShardSearcher.options(name=...)``); each group is
its own Serve application named after its generation, so a generation's replicas can be
started before the switch and deleted after it without touching any other generation.

A replica answers with one top-k merged over its shards (generation rows and scores, not
per-shard lists of id strings); the ingress merges the groups and resolves ids once.
Concurrent requests run in Serve's thread pool: single queries and ``search_threads=1`` use
the serial kernels (thread-safe); batches with ``search_threads > 1`` take the process-wide
parallel-kernel lock (`pipeline.search.sharded`).
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import scipy.sparse as sp
from ray import serve

from pipeline.serve.protocol import GroupAnswer, QueryBatch, SearchParams

log = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=8,
                  health_check_period_s=5, graceful_shutdown_timeout_s=10)
class ShardSearcher:
    """Loads its shards at start (`pipeline.search.load_shard`) and answers top-k per shard."""

    def __init__(self, index: str, storage_options: dict, generation: int,
                 shard_names: list[str], search_threads: int = 1,
                 filter_cache_bytes: int | None = None) -> None:
        from pipeline.catalog import IndexLayout, read_manifest
        from pipeline.format.fields import schema_from_json
        from pipeline.search import DEFAULT_FILTER_CACHE_BYTES, FilterCache, load_shard, shard_offsets

        started = time.perf_counter()
        layout = IndexLayout.at(index, storage_options)
        manifest = read_manifest(layout, generation)
        entries = {e.name: e for e in manifest.shards}
        missing = [n for n in shard_names if n not in entries]
        if missing:
            raise ValueError(f"generation {generation} of {layout.url} has no shards {missing}")
        self.generation = generation
        self.threads = search_threads
        offsets = shard_offsets(manifest)
        self.shards = [load_shard(layout, entries[name], offsets[name]) for name in shard_names]
        self.names = tuple(shard_names)
        self.manifest = manifest
        self.schema = schema_from_json(manifest.fields)
        self.filter_cache = FilterCache(DEFAULT_FILTER_CACHE_BYTES if filter_cache_bytes is None
                                        else filter_cache_bytes)
        self._tokens = None
        self.loaded_s = time.perf_counter() - started
        self.started_at = time.time()
        self.n_requests = 0
        self.n_queries = 0
        self._warm_up()
        log.info("searcher for generation %d loaded %s (%d docs) in %.2fs", generation,
                 shard_names, sum(s.entry.n_docs for s in self.shards), self.loaded_s)

    def _warm_up(self) -> None:
        """Compile the search kernels now, not on the first user request."""
        for shard in self.shards:
            vocab = shard.index.vocab_size
            one_term = sp.csr_matrix((np.ones(1, np.float32), np.zeros(1, np.int32),
                                      np.array([0, 1], np.int64)), shape=(1, vocab))
            shard.index.search(one_term, k=1, threads=1)

    def search(self, batch: QueryBatch, params: SearchParams) -> GroupAnswer:
        """Top-``params.k`` over the held shards (sync: runs in a worker thread)."""
        from pipeline.search import compile_filter, merge_rows
        from pipeline.search.sharded import hit_details, index_tokens

        queries = batch.to_csr()
        self.n_requests += 1
        self.n_queries += batch.n_queries
        # the ingress checked the filter against the same manifest; compiling is cheap
        flt = None if params.filter is None else compile_filter(params.filter, self.schema)
        parts = []
        for shard in self.shards:
            extra = {} if flt is None else {"allowed": shard.allowed(flt, self.filter_cache)}
            parts.append(shard.search_rows(queries, params.k, exact=params.exact,
                                           threads=self.threads, **params.index_params(),
                                           **extra))
        rows, scores = parts[0] if len(parts) == 1 else merge_rows(parts, params.k)
        details = None
        if params.fields is not None or params.explain:
            tokens = index_tokens(self.manifest, self) if params.explain else None
            details = hit_details(self.shards, rows, queries, params.fields, params.explain,
                                  params.exact, tokens, params.explain_terms)
        return GroupAnswer(self.names, rows, scores, details)

    def info(self) -> dict:
        ctx = serve.get_replica_context()
        return {"generation": self.generation, "replica": ctx.replica_id.unique_id,
                "pid": os.getpid(), "shards": [s.entry.name for s in self.shards],
                "n_docs": sum(s.entry.n_docs for s in self.shards), "loaded_s": round(self.loaded_s, 3),
                "started_at": self.started_at, "requests": self.n_requests, "queries": self.n_queries,
                "exact_loads": {s.entry.name: s.exact_loads for s in self.shards},
                "filter_cache": self.filter_cache.stats()}
