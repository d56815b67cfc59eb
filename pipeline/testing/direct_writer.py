"""Commit a generation straight from vectors already in memory, with the store APIs.

For the endpoint's benchmark (a 1M-document synthetic index) and its tests (a second
generation made of modified vectors). The production path is `lsr index`, which encodes a
corpus; this writes the same on-storage layout (postings, index, COMMITTED.json, manifest,
CURRENT) for vectors that did not come from a corpus, through the job's own shard writer
(`pipeline.batch.shard_writer.write_shard`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from pipeline.batch.shard_writer import write_shard
from pipeline.catalog import IndexLayout, Manifest, commit_generation, shard_name
from pipeline.catalog.manifest import now_utc
from pipeline.format import ShardPostings
from pipeline.format.fields import FieldSpec, build_columns, schema_to_json
from pipeline.index import BlockedIndexConfig

log = logging.getLogger(__name__)


def write_generation(url: str, generation: int, doc_ids: Sequence[str], vectors: sp.csr_matrix,
                     n_shards: int, encoder_settings: dict[str, Any], *, index_kind: str = "blocked",
                     index_params: dict[str, Any] | None = None,
                     storage_options: dict | None = None, commit: bool = True,
                     parent_generation: int | None = None,
                     fields: tuple[Sequence[FieldSpec], Sequence[dict]] | None = None) -> Manifest:
    """Split `vectors` into `n_shards` contiguous shards, write and (optionally) commit them.

    `fields`: (schema, one dict of checked values per document, in `doc_ids` order), written
    with each shard and recorded in the manifest.

    Documents keep their order (shards are contiguous runs), so merged results break ties
    in corpus order exactly like a job-built index.
    """
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
    if fields is not None:
        schema, rows = tuple(fields[0]), fields[1]
        if len(rows) != n:
            raise ValueError(f"{len(rows)} field rows for {n} vectors")
    entries = []
    for s in range(n_shards):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        name = shard_name(generation, s)
        part = vectors[lo:hi]
        postings = ShardPostings(doc_ids=ids[lo:hi], fingerprints=np.arange(lo, hi, dtype=np.uint64),
                                 vectors=part)
        entry = write_shard(layout, name, postings, index_kind=index_kind,
                            index_params=asdict(config) if config else {}, values_dtype="float32",
                            record={}, threads=os.cpu_count() or 1,
                            fields=None if fields is None else
                            (schema, build_columns(schema, rows[lo:hi]))).entry
        entries.append(entry)
        log.info("wrote shard %s (%d docs)", name, hi - lo)
    manifest = Manifest(
        generation=generation, created_at=now_utc(), encoder=dict(encoder_settings),
        index={"kind": index_kind, "params": asdict(config) if config else {}},
        shards=entries, corpus={"url": None, "format": "vectors", "fingerprint": None, "files": []},
        counts={"docs_in": n, "docs_indexed": n, "docs_rejected": 0},
        parent_generation=parent_generation, extra={"written_by": "pipeline.testing.direct_writer"},
        fields=schema_to_json(schema) if fields is not None else [])
    if commit:
        commit_generation(layout, manifest)
    return manifest
