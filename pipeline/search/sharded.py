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
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from pipeline.catalog.layout import IndexLayout
from pipeline.catalog.manifest import Manifest, ShardEntry, read_manifest
from pipeline.errors import UserError
from pipeline.format import load_blocked, load_exact, read_postings
from pipeline.format.index_group import IndexFormatError, check_index
from pipeline.format.fields import FieldColumn, FieldSpec, read_fields, schema_from_json
from pipeline.index.allowed import AllowedDocs
from pipeline.search.explain import MAX_EXPLAIN_TERMS, explain as explain_terms
from pipeline.search.filter_cache import DEFAULT_FILTER_CACHE_BYTES, FilterCache
from pipeline.search.filters import Filter, FilterError, compile_filter

log = logging.getLogger(__name__)

PARALLEL_KERNEL_LOCK = threading.Lock()


class FieldRequestError(UserError, ValueError):
    """A requested return field the index does not keep."""


@dataclass
class Hit:
    doc_id: str
    score: float
    fields: dict[str, Any] | None = None      # the requested fields (None when not asked)
    explain: list[dict] | None = None         # term contributions (None when not asked)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"doc_id": self.doc_id, "score": self.score}
        if self.fields is not None:
            out["fields"] = self.fields
        if self.explain is not None:
            out["explain"] = self.explain
        return out


def check_field_names(schema: Sequence[FieldSpec], names: Sequence[str]) -> list[str]:
    """The requested return fields, each kept by the index (`FieldRequestError` otherwise)."""
    known = {s.name for s in schema}
    out = []
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise FieldRequestError(f"unknown field {name!r} (this index keeps: "
                                    f"{', '.join(s.name for s in schema) or 'no fields'})")
        if name not in out:
            out.append(name)
    return out


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
    _fields: dict[str, FieldColumn] | None = field(default=None, repr=False)
    _fields_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def field_columns(self) -> dict[str, FieldColumn]:
        """The shard's fields (read once, on first use; empty for a shard without fields)."""
        if self._fields is None:
            with self._fields_lock:
                if self._fields is None:
                    if self.entry.fields_checksum is None:
                        self._fields = {}
                    else:
                        self._fields = read_fields(self.layout.fields(self.entry.name))[1]
        return self._fields

    def allowed(self, flt: Filter, cache: FilterCache | None = None) -> AllowedDocs:
        """The documents of this shard ``flt`` allows (through ``cache`` when given)."""
        def build() -> AllowedDocs:
            columns = self.field_columns()
            missing = [n for n in _filter_fields(flt.expr) if n not in columns]
            if missing:
                raise FilterError(f"shard {self.entry.name} has no field {missing[0]!r}")
            return AllowedDocs(flt.mask(columns, self.entry.n_docs))
        return build() if cache is None else cache.get(flt.key, self.entry.name, build)

    def field_values(self, row: int, names: Sequence[str]) -> dict[str, Any]:
        """The named fields of the shard-local document ``row`` (None when absent)."""
        columns = self.field_columns()
        return {name: columns[name].value(row) if name in columns else None for name in names}

    def document(self, row: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(terms, weights) of shard-local ``row`` as the index that scores it holds them
        (``exact``: the exact index), so explanations add up to the returned score."""
        return self._scoring_index(exact).document(row)

    def _scoring_index(self, exact: bool):
        return self.exact_index() if exact or self.entry.index_kind == "exact" else self.index

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
        index = self._scoring_index(exact)
        if index is not self.index:
            params = {k: v for k, v in params.items() if k == "allowed"}
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


def _filter_fields(expr: Any) -> list[str]:
    """Field names a (checked) filter expression reads."""
    (op, arg), = expr.items()
    if op in ("and", "or"):
        return [n for child in arg for n in _filter_fields(child)]
    if op == "not":
        return _filter_fields(arg)
    if op == "exists":
        return [arg["field"] if isinstance(arg, dict) else arg]
    return [next(iter(arg))]


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


def check_shards(layout: IndexLayout, manifest: Manifest, threads: int = 16) -> None:
    """What `load_shard` of each shard would refuse first, without reading an array
    (`check_index`: one small read each, in parallel, since on object storage each is a
    round trip). Raises `IndexFormatError` naming the first shard that fails."""
    from concurrent.futures import ThreadPoolExecutor

    def check(entry: ShardEntry) -> str | None:
        loc = layout.index(entry.name)
        try:
            check_index(loc.url, loc.storage_options, entry.index_kind, entry.n_docs)
        except IndexFormatError as exc:
            return f"shard {entry.name}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(manifest.shards)))) as pool:
        problems = [p for p in pool.map(check, manifest.shards) if p]
    if problems:
        more = f" (and {len(problems) - 1} more shards)" if len(problems) > 1 else ""
        raise IndexFormatError(problems[0] + more)


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
    """Every shard of one generation, searched in process and merged.

    Filters (`pipeline.search.filters`) are compiled once per call against the manifest's
    field schema and evaluated per shard into `AllowedDocs`, kept in ``filter_cache`` (an
    LRU of ``filter_cache_bytes``, default `DEFAULT_FILTER_CACHE_BYTES`) by the filter's
    canonical JSON, so a repeated filter costs nothing to evaluate.
    """

    def __init__(self, layout: IndexLayout, manifest: Manifest, shards: list[LoadedShard],
                 filter_cache_bytes: int = DEFAULT_FILTER_CACHE_BYTES):
        self.layout = layout
        self.manifest = manifest
        self.shards = shards
        self.doc_ids = (np.concatenate([s.doc_ids for s in shards]) if shards
                        else np.zeros(0, dtype=object))
        self.schema: tuple[FieldSpec, ...] = schema_from_json(manifest.fields)
        self.filter_cache = FilterCache(filter_cache_bytes)
        self._starts = np.asarray([s.offset for s in shards], dtype=np.int64)
        self._encoder = None
        self._encoder_lock = threading.Lock()
        self._tokens: list[str] | None = None

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None,
             generation: int | None = None,
             filter_cache_bytes: int = DEFAULT_FILTER_CACHE_BYTES) -> "ShardedIndex":
        layout = IndexLayout.at(url, storage_options)
        manifest = read_manifest(layout, generation)
        offsets = shard_offsets(manifest)
        shards = [load_shard(layout, entry, offsets[entry.name]) for entry in manifest.shards]
        log.info("opened %s generation %d: %d shards, %d docs", layout.url, manifest.generation,
                 len(shards), manifest.n_docs)
        return cls(layout, manifest, shards, filter_cache_bytes)

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

    def tokens(self) -> list[str] | None:
        """Token string of each term id, from the tokenizer the manifest records (None for
        an index written without a model: explanations then name terms by id)."""
        return index_tokens(self.manifest, self)

    def compile_filter(self, expr: Any, max_nodes: int | None = None) -> Filter:
        """``expr`` checked against this index's fields (`FilterError` when it does not fit)."""
        if isinstance(expr, Filter):
            return expr
        return compile_filter(expr, self.schema, **({} if max_nodes is None
                                                    else {"max_nodes": max_nodes}))

    def allowed(self, filter: Any) -> list[AllowedDocs]:
        """Per shard, the documents ``filter`` allows (cached)."""
        flt = self.compile_filter(filter)
        return [s.allowed(flt, self.filter_cache) for s in self.shards]

    def search_rows(self, queries: sp.csr_matrix, k: int = 10, exact: bool = False,
                    threads: int | None = None, filter: Any = None, **params
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Merged top-k of every shard as generation rows (see `merge_rows`); with
        ``filter``, of the documents it allows only."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        flt = None if filter is None else self.compile_filter(filter)
        parts = []
        for s in self.shards:
            extra = {} if flt is None else {"allowed": s.allowed(flt, self.filter_cache)}
            parts.append(s.search_rows(queries, k, exact=exact, threads=threads, **params,
                                       **extra))
        return merge_rows(parts, k)

    def search_vectors(self, queries: sp.csr_matrix, k: int = 10, exact: bool = False,
                       threads: int | None = None, filter: Any = None,
                       fields: Sequence[str] | None = None, explain: bool = False,
                       max_explain_terms: int = MAX_EXPLAIN_TERMS, **params) -> list[list[Hit]]:
        """Top-k hits; ``filter`` restricts them, ``fields`` adds those fields to each hit,
        ``explain`` its term contributions (at most ``max_explain_terms``, largest first)."""
        names = None if fields is None else check_field_names(self.schema, fields)
        rows, scores = self.search_rows(queries, k, exact=exact, threads=threads, filter=filter,
                                        **params)
        hits = rows_to_hits(self.doc_ids, rows, scores)
        if names is not None or explain:
            tokens = self.tokens() if explain else None
            details = hit_details(self.shards, rows, queries, names, explain, exact, tokens,
                                  max_explain_terms)
            for row_hits, row_details in zip(hits, details):
                for hit, detail in zip(row_hits, row_details):
                    hit.fields = detail.get("fields")
                    hit.explain = detail.get("explain")
        return hits

    def search(self, queries: Sequence[str], k: int = 10, exact: bool = False,
               filter: Any = None, fields: Sequence[str] | None = None, explain: bool = False,
               **params) -> list[list[Hit]]:
        if isinstance(queries, str):
            raise TypeError("search takes a list of query strings")
        # check the request before encoding (a bad filter or field costs no model call)
        flt = None if filter is None else self.compile_filter(filter)
        if fields is not None:
            check_field_names(self.schema, fields)
        vectors = self.encoder().encode_queries(list(queries))
        return self.search_vectors(vectors, k=k, exact=exact, filter=flt, fields=fields,
                                   explain=explain, **params)

    def exact_loads(self) -> int:
        return sum(s.exact_loads for s in self.shards)


def hit_details(shards: Sequence[LoadedShard], rows: np.ndarray, queries: sp.csr_matrix,
                names: Sequence[str] | None, explain: bool, exact: bool,
                tokens: Sequence[str] | None, max_explain_terms: int = MAX_EXPLAIN_TERMS
                ) -> list[list[dict]]:
    """Per query, per valid (>= 0) generation row of ``rows``: ``{"fields": ..., "explain":
    ...}`` (each key only when asked), from the shard among ``shards`` holding the row."""
    queries = sp.csr_matrix(queries)
    starts = np.asarray([s.offset for s in shards], dtype=np.int64)
    out = []
    for q in range(rows.shape[0]):
        a, b = queries.indptr[q], queries.indptr[q + 1]
        details = []
        for row in rows[q][rows[q] >= 0]:
            shard = shards[int(np.searchsorted(starts, row, side="right")) - 1]
            local = int(row) - shard.offset
            if not 0 <= local < shard.entry.n_docs:
                raise ValueError(f"row {row} is not held by these shards")
            detail: dict[str, Any] = {}
            if names is not None:
                detail["fields"] = shard.field_values(local, names)
            if explain:
                d_terms, d_weights = shard.document(local, exact=exact)
                detail["explain"] = [c.to_json() for c in explain_terms(
                    queries.indices[a:b], queries.data[a:b], d_terms, d_weights, tokens,
                    max_explain_terms)]
            details.append(detail)
        out.append(details)
    return out


_TOKENS_LOCK = threading.Lock()


def index_tokens(manifest: Manifest, holder: Any) -> list[str] | None:
    """Token strings of the manifest's tokenizer, cached on ``holder._tokens``."""
    if holder._tokens is None:
        source = manifest.encoder.get("source")
        if not source:
            return None
        with _TOKENS_LOCK:
            if holder._tokens is None:
                from pipeline.encode.tokens import load_tokenizer

                tokenizer = load_tokenizer(source)
                vocab = int(manifest.encoder.get("vocab_size") or len(tokenizer))
                holder._tokens = tokenizer.convert_ids_to_tokens(list(range(vocab)))
    return holder._tokens
