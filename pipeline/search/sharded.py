"""A committed index opened in one process: load shards, search them, merge the top-k.

The Serve deployment uses the same pieces (`load_shard`, `merge_top_k`) with one shard
per replica; `lsr search`, evaluation and the tests use `ShardedIndex` directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from pipeline.catalog.layout import IndexLayout
from pipeline.catalog.manifest import Manifest, ShardEntry, read_manifest
from pipeline.format import load_blocked, load_exact, read_postings

log = logging.getLogger(__name__)


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
    _exact: object | None = field(default=None, repr=False)

    def exact_index(self):
        """Exact search over the shard's stored vectors (built on first use)."""
        from pipeline.index import ExactIndex

        if self.entry.index_kind == "exact":
            return self.index
        if self._exact is None:
            self._exact = ExactIndex(read_postings(self.layout.postings(self.entry.name)).vectors)
        return self._exact

    def search(self, queries: sp.csr_matrix, k: int, exact: bool = False,
               **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard: (doc ids as str objects, -padded with None; scores float32)."""
        if exact or self.entry.index_kind == "exact":
            idx, scores = self.exact_index().search(queries, k=k)
        else:
            idx, scores = self.index.search(queries, k=k, **params)
        ids = np.where(idx >= 0, self.doc_ids[np.maximum(idx, 0)], None)
        return ids, scores


def _read_doc_ids(layout: IndexLayout, name: str) -> np.ndarray:
    import zarr

    from pipeline.objstore import zarr_store

    group = zarr.open_group(zarr_store(layout.postings(name), read_only=True), mode="r")
    return np.asarray(group["doc_ids"][:], dtype=object)


def load_shard(layout: IndexLayout, entry: ShardEntry) -> LoadedShard:
    loc = layout.index(entry.name)
    load = load_exact if entry.index_kind == "exact" else load_blocked
    index = load(loc.url, storage_options=loc.storage_options)
    doc_ids = _read_doc_ids(layout, entry.name)
    if len(doc_ids) != entry.n_docs or index.n_docs != entry.n_docs:
        raise ValueError(f"shard {entry.name}: manifest says {entry.n_docs} docs, index has "
                         f"{index.n_docs}, postings {len(doc_ids)}")
    return LoadedShard(layout, entry, index, doc_ids)


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
        self._encoder = None

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None,
             generation: int | None = None) -> "ShardedIndex":
        layout = IndexLayout.at(url, storage_options)
        manifest = read_manifest(layout, generation)
        shards = [load_shard(layout, entry) for entry in manifest.shards]
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
        """The query encoder matching the manifest's encoder settings (loaded once)."""
        if self._encoder is None:
            from pipeline.encode import encoder_from_settings

            self._encoder = encoder_from_settings(self.manifest.encoder)
        return self._encoder

    def search_vectors(self, queries: sp.csr_matrix, k: int = 10, exact: bool = False,
                       **params) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return merge_top_k([s.search(queries, k, exact=exact, **params) for s in self.shards], k)

    def search(self, queries: Sequence[str], k: int = 10, exact: bool = False,
               **params) -> list[list[Hit]]:
        if isinstance(queries, str):
            raise TypeError("search takes a list of query strings")
        vectors = self.encoder().encode_queries(list(queries))
        return self.search_vectors(vectors, k=k, exact=exact, **params)
