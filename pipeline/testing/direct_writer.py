"""Commit a generation straight from vectors already in memory, with the store APIs.

For the endpoint's benchmark (a 1M-document synthetic index) and its tests (a second
generation made of modified vectors). The production path is `lsr index`, which encodes a
corpus; this writes the same on-storage layout (postings, index, COMMITTED.json, manifest,
CURRENT) for vectors that did not come from a corpus.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from pipeline.storage import write_json_atomic
from pipeline.store import (
    IndexLayout,
    Manifest,
    ShardEntry,
    ShardPostings,
    commit_generation,
    shard_name,
    write_postings,
)
from pipeline.store.manifest import now_utc

log = logging.getLogger(__name__)


def write_generation(url: str, generation: int, doc_ids: Sequence[str], vectors: sp.csr_matrix,
                     n_shards: int, encoder_settings: dict[str, Any], *, index_kind: str = "blocked",
                     index_params: dict[str, Any] | None = None,
                     storage_options: dict | None = None, commit: bool = True,
                     parent_generation: int | None = None) -> Manifest:
    """Split `vectors` into `n_shards` contiguous shards, write and (optionally) commit them.

    Documents keep their order (shards are contiguous runs), so merged results break ties
    in corpus order exactly like a job-built index.
    """
    from pipeline.index import BlockedIndex, BlockedIndexConfig, ExactIndex

    vectors = sp.csr_matrix(vectors, dtype=np.float32)
    n = vectors.shape[0]
    if len(doc_ids) != n:
        raise ValueError(f"{len(doc_ids)} doc ids for {n} vectors")
    if not 1 <= n_shards <= max(n, 1):
        raise ValueError(f"n_shards must be in 1..{n}, got {n_shards}")
    if index_kind not in ("blocked", "exact"):
        raise ValueError(f"index_kind must be blocked or exact, got {index_kind!r}")
    layout = IndexLayout.at(url, storage_options)
    config = BlockedIndexConfig(**(index_params or {})) if index_kind == "blocked" else None
    bounds = np.linspace(0, n, n_shards + 1).astype(np.int64)
    ids = np.asarray([str(d) for d in doc_ids], dtype=object)
    entries = []
    for s in range(n_shards):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        name = shard_name(generation, s)
        part = vectors[lo:hi]
        postings = ShardPostings(doc_ids=ids[lo:hi], fingerprints=np.arange(lo, hi, dtype=np.uint64),
                                 vectors=part)
        checksum = write_postings(layout.postings(name), postings, values_dtype="float32")
        index = ExactIndex(part) if config is None else BlockedIndex.build(part, config)
        loc = layout.index(name)
        index.save(loc.url, storage_options=loc.storage_options)
        entry = ShardEntry(name=name, n_docs=hi - lo, nnz=int(part.nnz), postings_checksum=checksum,
                           index_kind=index_kind, index_nbytes=int(index.nbytes))
        write_json_atomic(layout.shard_commit(name), {**entry.__dict__, "committed_at": now_utc()})
        entries.append(entry)
        log.info("wrote shard %s (%d docs)", name, hi - lo)
    from dataclasses import asdict

    manifest = Manifest(
        generation=generation, created_at=now_utc(), encoder=dict(encoder_settings),
        index={"kind": index_kind, "params": asdict(config) if config else {}},
        shards=entries, corpus={"url": None, "format": "vectors", "fingerprint": None, "files": []},
        counts={"docs_in": n, "docs_indexed": n, "docs_rejected": 0},
        parent_generation=parent_generation, extra={"written_by": "pipeline.serve.direct_index"})
    if commit:
        commit_generation(layout, manifest)
    return manifest
