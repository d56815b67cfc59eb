"""What travels between the endpoint's deployments: encoded queries, routes, shard answers.

Queries cross process boundaries as three flat arrays (CSR parts) instead of a scipy
object: Ray ships numpy buffers without copying them through pickle, and the receiver
rebuilds the matrix without validation work it does not need.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class QueryBatch:
    """Encoded queries: rows of a (n_queries, vocab_size) float32 CSR matrix."""

    indptr: np.ndarray     # int64 (n_queries + 1,)
    indices: np.ndarray    # int32 (nnz,) term ids, ascending within a row
    values: np.ndarray     # float32 (nnz,)
    vocab_size: int

    @classmethod
    def from_csr(cls, csr: sp.csr_matrix) -> "QueryBatch":
        csr = sp.csr_matrix(csr)
        csr.sort_indices()
        return cls(csr.indptr.astype(np.int64), csr.indices.astype(np.int32),
                   csr.data.astype(np.float32), int(csr.shape[1]))

    @property
    def n_queries(self) -> int:
        return len(self.indptr) - 1

    def to_csr(self) -> sp.csr_matrix:
        # Arrays Ray deserialised without a copy are read-only; numba types read-only arrays
        # differently and would compile every kernel again on the first query (tens of s).
        parts = [np.require(a, requirements="W") for a in (self.values, self.indices, self.indptr)]
        return sp.csr_matrix(tuple(parts), shape=(self.n_queries, self.vocab_size))

    def rows(self, start: int, stop: int) -> "QueryBatch":
        """Queries start..stop-1 as their own batch."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return QueryBatch(self.indptr[start:stop + 1] - lo, self.indices[lo:hi],
                          self.values[lo:hi], self.vocab_size)


@dataclass(frozen=True)
class SearchParams:
    k: int
    exact: bool = False
    query_cut: int | None = None
    heap_factor: float | None = None
    filter: Any = None                      # filter expression (checked by the ingress)
    fields: tuple[str, ...] | None = None   # return fields (checked by the ingress)
    explain: bool = False
    explain_terms: int = 64

    def index_params(self) -> dict[str, Any]:
        return {name: value for name, value in (("query_cut", self.query_cut),
                                                ("heap_factor", self.heap_factor))
                if value is not None}


@dataclass(frozen=True)
class GroupAnswer:
    """A searcher replica's top-k for a batch, merged over its shards: generation rows
    (int64 (nq, k), -1 padded) and float32 scores. Ids are resolved by the ingress after
    the global merge."""

    shards: tuple[str, ...]
    rows: np.ndarray
    scores: np.ndarray
    # with fields/explain asked: per query, a dict per valid row of ``rows`` (see
    # `pipeline.search.sharded.hit_details`), for the ingress to carry through its merge
    details: list[list[dict]] | None = None


@dataclass(frozen=True)
class ShardGroup:
    """Consecutive shards of one generation served by one ShardSearcher deployment."""

    app: str                   # Serve application holding the deployment
    deployment: str
    shards: tuple[str, ...]    # shard names, manifest order
    n_docs: int


@dataclass(frozen=True)
class Route:
    """Where one generation is served. Immutable: a switch publishes a new Route."""

    version: int                       # increases with every switch
    generation: int
    groups: tuple[ShardGroup, ...]     # manifest shard order
    encoder_settings: dict[str, Any]   # the manifest's encoder settings
    encoder_app: str | None            # QueryEncoder app, None when encoding in the ingress
    n_docs: int
    apps: tuple[str, ...] = field(default=())   # every Serve app this route owns
    embedded: bool = False             # the ingress holds every shard itself (no searchers)
    shard_names: tuple[str, ...] = field(default=())   # manifest order (embedded routes)

    @property
    def shards(self) -> tuple[str, ...]:
        if self.embedded:
            return self.shard_names
        return tuple(s for g in self.groups for s in g.shards)


def encoder_key(settings: dict[str, Any]) -> str:
    """Short stable digest of encoder settings: generations with equal settings share encoders."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]
