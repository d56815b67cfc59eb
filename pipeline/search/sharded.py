"""A committed index opened in one process: load shards, search them, merge the top-k.

The Serve deployments use the same pieces (`load_shard`, `merge_rows`, `ShardedIndex`);
`lsr search`, evaluation and the tests use `ShardedIndex` directly.

Thread safety (a Serve replica calls these from several threads at once):

* One query, or ``threads=1``, runs the index's serial kernel on the calling thread with
  per-thread scratch: any number of threads may do so concurrently.
* A batch with ``threads > 1`` runs a ``parallel=True`` numba kernel. Numba's thread pool
  must not be entered by two threads at once (the workqueue layer aborts the process, omp
  oversubscribes), so those calls are serialised by one process-wide lock,
  `PARALLEL_KERNEL_LOCK`.
* The exact index of a blocked shard is built from its postings on first use, once, under
  the shard's lock; concurrent first users wait for that one build.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from pipeline.catalog.layout import IndexLayout
from pipeline.catalog.manifest import Manifest, ShardEntry, read_manifest
from pipeline.format import load_blocked, load_exact, read_postings

log = logging.getLogger(__name__)

PARALLEL_KERNEL_LOCK = threading.Lock()


@dataclass
class Hit:
    doc_id: str
    score: float


@dataclass
class LoadedShard:
    """One shard in memory: its index and the external ids of its documents."""

    layout: IndexLayout
    entry: ShardEntry
    index: object                      # BlockedIndex or ExactIndex
    doc_ids: np.ndarray                # object array of str, shard order
    offset: int = 0                    # row of the shard's first document in its generation
    _exact: object | None = field(default=None, repr=False)
    _exact_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    exact_loads: int = 0               # times the exact index was built (1 at most)

    def exact_index(self):
        """Exact search over the shard's stored vectors (built once, on first use)."""
        from pipeline.index import ExactIndex

        if self.entry.index_kind == "exact":
            return self.index
        if self._exact is None:
            with self._exact_lock:
                if self._exact is None:
                    vectors = read_postings(self.layout.postings(self.entry.name)).vectors
                    self._exact = ExactIndex(vectors)
                    self.exact_loads += 1
        return self._exact

    def search_local(self, queries: sp.csr_matrix, k: int, exact: bool = False,
                     threads: int | None = None, **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard: (shard-local rows int64, -1 padded; scores float32).

        ``threads``: 1 (or a single query) is the serial path, safe from any number of
        threads; otherwise (None = every core) a batch runs on numba's pool under
        `PARALLEL_KERNEL_LOCK`.
        """
        index = self.exact_index() if exact or self.entry.index_kind == "exact" else self.index
        if index is not self.index:
            params = {}
        if threads == 1 or queries.shape[0] <= 1:
            return index.search(queries, k=k, threads=1, **params)
        with PARALLEL_KERNEL_LOCK:
            return index.search(queries, k=k, threads=threads, **params)

    def search_rows(self, queries: sp.csr_matrix, k: int, exact: bool = False,
                    threads: int | None = None, **params) -> tuple[np.ndarray, np.ndarray]:
        """`search_local` with rows of the generation (``offset`` added; -1 stays -1)."""
        rows, scores = self.search_local(queries, k, exact=exact, threads=threads, **params)
        return np.where(rows >= 0, rows + self.offset, -1), scores

    def search(self, queries: sp.csr_matrix, k: int, exact: bool = False,
               threads: int | None = None, **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard: (doc ids as str objects, -padded with None; scores float32)."""
        idx, scores = self.search_local(queries, k, exact=exact, threads=threads, **params)
        ids = np.where(idx >= 0, self.doc_ids[np.maximum(idx, 0)], None)
        return ids, scores


def _read_doc_ids(layout: IndexLayout, name: str) -> np.ndarray:
    import zarr

    from pipeline.objstore import zarr_store

    group = zarr.open_group(zarr_store(layout.postings(name), read_only=True), mode="r")
    return np.asarray(group["doc_ids"][:], dtype=object)


def read_doc_ids(layout: IndexLayout, manifest: Manifest) -> np.ndarray:
    """External ids of every document of a generation, in row (manifest) order."""
    parts = [_read_doc_ids(layout, entry.name) for entry in manifest.shards]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=object)


def shard_offsets(manifest: Manifest) -> dict[str, int]:
    """Row of each shard's first document in its generation."""
    offsets, row = {}, 0
    for entry in manifest.shards:
        offsets[entry.name] = row
        row += entry.n_docs
    return offsets


def load_shard(layout: IndexLayout, entry: ShardEntry, offset: int = 0) -> LoadedShard:
    loc = layout.index(entry.name)
    load = load_exact if entry.index_kind == "exact" else load_blocked
    index = load(loc.url, storage_options=loc.storage_options)
    doc_ids = _read_doc_ids(layout, entry.name)
    if len(doc_ids) != entry.n_docs or index.n_docs != entry.n_docs:
        raise ValueError(f"shard {entry.name}: manifest says {entry.n_docs} docs, index has "
                         f"{index.n_docs}, postings {len(doc_ids)}")
    return LoadedShard(layout, entry, index, doc_ids, offset)


def merge_rows(per_part: Sequence[tuple[np.ndarray, np.ndarray]], k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Merge top-k lists of generation rows (-1 padded) into one top-k per query.

    Returns (rows int64 (nq, k), scores float32 (nq, k)), -1 / 0.0 padded: score
    descending, ties by lower row, i.e. corpus order, as in every shard's own ranking.
    """
    if not per_part:
        raise ValueError("nothing to merge")
    rows = np.concatenate([p[0] for p in per_part], axis=1).astype(np.int64, copy=False)
    scores = np.concatenate([p[1] for p in per_part], axis=1).astype(np.float32, copy=False)
    nq = rows.shape[0]
    out_rows = np.full((nq, k), -1, np.int64)
    out_scores = np.zeros((nq, k), np.float32)
    for q in range(nq):
        valid = np.flatnonzero(rows[q] >= 0)
        order = valid[np.lexsort((rows[q, valid], -scores[q, valid]))][:k]
        out_rows[q, :order.size] = rows[q, order]
        out_scores[q, :order.size] = scores[q, order]
    return out_rows, out_scores


def rows_to_hits(doc_ids: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> list[list[Hit]]:
    """Merged rows -> hits with external ids (padding dropped)."""
    out = []
    for q in range(rows.shape[0]):
        keep = rows[q] >= 0
        out.append([Hit(str(d), float(s)) for d, s in zip(doc_ids[rows[q, keep]], scores[q, keep])])
    return out


def merge_top_k(per_shard: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> list[list[Hit]]:
    """Merge per-shard top-k lists (in shard order) into one top-k per query.

    Ties keep corpus order: shards are contiguous runs of the corpus listed in order, and
    each shard breaks its own ties by document order, so a stable sort on score suffices.
    """
    if not per_shard:
        return []
    ids = np.concatenate([p[0] for p in per_shard], axis=1)
    scores = np.concatenate([p[1] for p in per_shard], axis=1)
    out = []
    for q in range(ids.shape[0]):
        valid = np.flatnonzero(ids[q] != None)  # noqa: E711 - object array comparison
        order = valid[np.argsort(-scores[q, valid], kind="stable")][:k]
        out.append([Hit(str(ids[q, j]), float(scores[q, j])) for j in order])
    return out


class ShardedIndex:
    """Every shard of one generation, searched in process and merged."""

    def __init__(self, layout: IndexLayout, manifest: Manifest, shards: list[LoadedShard]):
        self.layout = layout
        self.manifest = manifest
        self.shards = shards
        self.doc_ids = (np.concatenate([s.doc_ids for s in shards]) if shards
                        else np.zeros(0, dtype=object))
        self._encoder = None
        self._encoder_lock = threading.Lock()

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None,
             generation: int | None = None) -> "ShardedIndex":
        layout = IndexLayout.at(url, storage_options)
        manifest = read_manifest(layout, generation)
        offsets = shard_offsets(manifest)
        shards = [load_shard(layout, entry, offsets[entry.name]) for entry in manifest.shards]
        log.info("opened %s generation %d: %d shards, %d docs", layout.url, manifest.generation,
                 len(shards), manifest.n_docs)
        return cls(layout, manifest, shards)

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def n_docs(self) -> int:
        return self.manifest.n_docs

    def encoder(self):
        """The query encoder of the manifest's settings (loaded once, `pipeline.encode.query.
        query_encoder`): the same vectors the endpoint encodes."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    from pipeline.encode.query import query_encoder

                    self._encoder = query_encoder(self.manifest.encoder, device="auto")
        return self._encoder

    def search_rows(self, queries: sp.csr_matrix, k: int = 10, exact: bool = False,
                    threads: int | None = None, **params) -> tuple[np.ndarray, np.ndarray]:
        """Merged top-k of every shard as generation rows (see `merge_rows`)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return merge_rows([s.search_rows(queries, k, exact=exact, threads=threads, **params)
                           for s in self.shards], k)

    def search_vectors(self, queries: sp.csr_matrix, k: int = 10, exact: bool = False,
                       threads: int | None = None, **params) -> list[list[Hit]]:
        rows, scores = self.search_rows(queries, k, exact=exact, threads=threads, **params)
        return rows_to_hits(self.doc_ids, rows, scores)

    def search(self, queries: Sequence[str], k: int = 10, exact: bool = False,
               **params) -> list[list[Hit]]:
        if isinstance(queries, str):
            raise TypeError("search takes a list of query strings")
        vectors = self.encoder().encode_queries(list(queries))
        return self.search_vectors(vectors, k=k, exact=exact, **params)

    def exact_loads(self) -> int:
        return sum(s.exact_loads for s in self.shards)
