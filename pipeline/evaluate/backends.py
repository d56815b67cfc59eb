"""What evaluation searches: a small `SearchBackend` interface and its in-process SPLADE implementation.

A backend turns query texts into whatever it searches with (`encode_queries`), searches a batch of
encoded queries (`search`, ranked ``(doc_id, score)`` lists, best first, external document ids), and
describes itself (`settings`: the model and the index parameters, for the report). Evaluation times
the two steps separately, so a backend only has to be correct.

Implementations: `SpladeBackend` (an encoder plus `ExactIndex` or `BlockedIndex` over the collection,
in this process) and `pipeline.evaluate.bm25.BM25Backend` (the orientation baseline). A sharded index
written by ``lsr index`` plugs in as one more class with the same four members.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import scipy.sparse as sp

from pipeline.evaluate.metrics import Ranked

log = logging.getLogger(__name__)


@runtime_checkable
class SearchBackend(Protocol):
    """Anything evaluation can search."""

    name: str        # shown in reports, e.g. "splade-tiny exact"
    exact: bool      # True when rankings are exact (no approximation in the index)

    def encode_queries(self, texts: Sequence[str]) -> Any:
        """Encode a batch of query texts into the form `search` takes."""

    def search(self, encoded: Any, k: int, threads: int | None = None) -> list[Ranked]:
        """Top-k ``(doc_id, score)`` per encoded query, best first; fewer when fewer docs match."""

    def settings(self) -> dict:
        """``{"model": {...}, "index": {...}}`` for the report."""


@runtime_checkable
class QueryEncoder(Protocol):
    """The part of `pipeline.encode.SpladeEncoder` that searching needs."""

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix: ...

    def settings(self) -> dict: ...


def index_settings(index: Any) -> dict:
    """An index's parameters for the report: its class and its config dataclass, if it has one."""
    out: dict[str, Any] = {"type": type(index).__name__}
    config = getattr(index, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        out.update(dataclasses.asdict(config))
    return out


def _as_csr(matrix: Any) -> sp.csr_matrix:
    if not sp.issparse(matrix):
        raise TypeError(f"expected a scipy sparse matrix, got {type(matrix).__name__}")
    return sp.csr_matrix(matrix, dtype=np.float32)


class SpladeBackend:
    """SPLADE over an in-process index: `ExactIndex` (exact) or `BlockedIndex` (approximate)."""

    def __init__(self, doc_ids: Sequence[str], index: Any, query_encoder: QueryEncoder, *,
                 exact: bool, name: str | None = None):
        self.doc_ids = np.asarray(list(doc_ids), dtype=object)
        self.index = index
        self.query_encoder = query_encoder
        self.exact = exact
        model = query_encoder.settings().get("model", "splade")
        self.name = name or f"{model} {'exact' if exact else 'approx'}"

    @classmethod
    def build(cls, doc_ids: Sequence[str], docs: sp.spmatrix, query_encoder: QueryEncoder, *,
              exact: bool, index_config: Any = None, name: str | None = None) -> "SpladeBackend":
        """Index encoded documents (rows in `doc_ids` order) with `ExactIndex` or `BlockedIndex`."""
        from pipeline.index import BlockedIndex, ExactIndex

        docs = _as_csr(docs)
        if docs.shape[0] != len(doc_ids):
            raise ValueError(f"{docs.shape[0]} encoded documents for {len(doc_ids)} document ids")
        if exact:
            if index_config is not None:
                raise ValueError("index_config applies to the approximate (blocked) index only")
            index = ExactIndex(docs)
        else:
            index = BlockedIndex.build(docs, config=index_config)
        return cls(doc_ids, index, query_encoder, exact=exact, name=name)

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        return _as_csr(self.query_encoder.encode_queries(list(texts)))

    def search(self, encoded: sp.csr_matrix, k: int, threads: int | None = None) -> list[Ranked]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        doc_index, scores = self.index.search(encoded, k, threads=threads)
        out: list[Ranked] = []
        for row_index, row_scores in zip(doc_index, scores):
            keep = row_index >= 0  # -1 pads rows with fewer than k matching documents
            out.append(list(zip(self.doc_ids[row_index[keep]].tolist(), row_scores[keep].tolist())))
        return out

    def settings(self) -> dict:
        return {"model": self.query_encoder.settings(), "index": index_settings(self.index)}


class ShardedBackend:
    """A committed index written by ``lsr index`` (`pipeline.search.ShardedIndex`): all shards, merged.

    Queries are encoded with the encoder the index's manifest records (`query_encoder_from_settings`:
    an inference-free model loads only its static token weights). `exact=True` scores every
    shard's stored vectors exactly; otherwise each shard's own index kind is searched.
    """

    def __init__(self, opened: Any, *, exact: bool = False, name: str | None = None,
                 search_params: dict | None = None):
        self.opened = opened
        kinds = {shard.entry.index_kind for shard in opened.shards}
        self.exact = exact or kinds == {"exact"}
        self.search_params = dict(search_params or {})
        self._query_encoder: Any = None
        model = opened.manifest.encoder.get("model", "splade")
        self.name = name or f"{model} {'exact' if self.exact else 'approx'} (index)"

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None, generation: int | None = None,
             **kwargs: Any) -> "ShardedBackend":
        from pipeline.search import ShardedIndex

        return cls(ShardedIndex.open(url, storage_options, generation=generation), **kwargs)

    def exact_twin(self) -> "ShardedBackend":
        """The same opened index searched exactly (for the approximation's recall)."""
        twin = ShardedBackend(self.opened, exact=True)
        twin._query_encoder = self._query_encoder
        return twin

    @property
    def n_docs(self) -> int:
        return self.opened.n_docs

    def query_encoder(self) -> Any:
        """The manifest's query encoder, loaded once (a `StaticQueryEncoder` for inference-free models)."""
        if self._query_encoder is None:
            from pipeline.encode import query_encoder_from_settings

            self._query_encoder = query_encoder_from_settings(self.opened.manifest.encoder)
        return self._query_encoder

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        return _as_csr(self.query_encoder().encode_queries(list(texts)))

    def search(self, encoded: sp.csr_matrix, k: int, threads: int | None = None) -> list[Ranked]:
        params = dict(self.search_params)
        if threads is not None and not self.exact:
            params["threads"] = threads
        hits = self.opened.search_vectors(encoded, k=k, exact=self.exact, **params)
        return [[(hit.doc_id, hit.score) for hit in row] for row in hits]

    def settings(self) -> dict:
        manifest = self.opened.manifest
        return {"model": dict(manifest.encoder),
                "index": {**manifest.index, "url": self.opened.layout.url, "generation": manifest.generation,
                          "shards": len(manifest.shards), "exact_search": self.exact,
                          **self.search_params}}
