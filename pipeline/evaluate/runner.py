"""The evaluation run: search every judged query, score the rankings, time the backend.

Effectiveness comes from one batched search (depth k + 1, so the BEIR self-hit can be dropped
before cutting to k). Efficiency is measured on the same backend after one warm-up query:
- batched: every judged query encoded in one call and searched in one call -> QPS (end to end,
  and search alone);
- single query: each judged query encoded and searched on its own, one after another -> mean and
  p99 latency (end to end, and search alone).
For an approximate backend, an exact backend over the same documents searches the same encoded
queries, and recall@10 of the approximate top 10 against the exact top 10 is reported.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pipeline.evaluate.backends import SearchBackend
from pipeline.evaluate.beir import Qrels, iter_corpus, load_corpus, load_qrels, load_queries, open_beir
from pipeline.evaluate.metrics import (DEFAULT_MEASURES, Ranked, count_unknown_docs, drop_self_hit,
                                       evaluate_rankings, judged_split, overlap_at, parse_measures)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collection:
    """A loaded BEIR collection: queries, qrels, document ids (and texts when loaded for indexing)."""

    name: str
    split: str
    queries: dict[str, str]
    qrels: Qrels
    doc_ids: list[str]
    texts: list[str] | None = None


def encode_documents(encoder, texts: list[str]):
    """Document vectors as the indexing job makes them: an empty document (title and text
    blank, text "") gets an empty vector, which no query retrieves; the others are encoded.
    Evaluation then scores such documents like trec_eval scores a document never retrieved."""
    import scipy.sparse as sp

    todo = [i for i, t in enumerate(texts) if t]
    if len(todo) == len(texts):
        return sp.csr_matrix(encoder.encode(texts))
    encoded = sp.csr_matrix(encoder.encode([texts[i] for i in todo])) if todo else None
    n_cols = encoded.shape[1] if encoded is not None else int(encoder.settings()["vocab_size"])
    place = sp.csr_matrix((np.ones(len(todo), np.float32), (todo, np.arange(len(todo)))),
                          shape=(len(texts), len(todo)))
    log.info("%d empty document(s) get empty vectors", len(texts) - len(todo))
    return sp.csr_matrix(place @ encoded) if encoded is not None else sp.csr_matrix((len(texts), n_cols),
                                                                                    dtype=np.float32)


def load_collection(folder: str, split: str = "test", *, with_texts: bool = True,
                    storage_options: dict | None = None) -> Collection:
    """Read a BEIR folder; `with_texts=False` keeps only document ids (enough when an index exists)."""
    paths = open_beir(folder, split, storage_options)
    queries = load_queries(paths.queries, storage_options)
    qrels = load_qrels(paths.qrels, storage_options)
    if with_texts:
        doc_ids, texts = load_corpus(paths.corpus, storage_options)
    else:
        doc_ids, texts = [doc_id for doc_id, _ in iter_corpus(paths.corpus, storage_options)], None
    if not doc_ids:
        raise ValueError(f"{paths.corpus}: no documents")
    return Collection(name=paths.name, split=split, queries=queries, qrels=qrels, doc_ids=doc_ids,
                      texts=texts)


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate; validated at construction."""

    k: int = 1000
    measures: tuple[str, ...] = DEFAULT_MEASURES
    drop_self_hits: bool = True     # BEIR: a query never retrieves the document with its own id
    measure_latency: bool = True    # the one-query-at-a-time pass (QPS is always measured)
    threads: int | None = None      # search threads for the batched pass; None = the index's default
    overlap_depth: int = 10         # approximate vs exact: recall at this depth

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.overlap_depth < 1:
            raise ValueError(f"overlap_depth must be >= 1, got {self.overlap_depth}")
        if not self.measures:
            raise ValueError("at least one measure is needed")
        parse_measures(self.measures, self.k)  # fails here, not after the search


@dataclass
class EvalResult:
    """Everything one evaluation measured; `to_dict` is the JSON report."""

    dataset: str
    split: str
    system: str
    k: int
    metrics: dict[str, float]
    efficiency: dict[str, float]
    counts: dict[str, int]
    settings: dict[str, Any]
    conventions: dict[str, Any]
    rankings: dict[str, Ranked] = field(repr=False, default_factory=dict)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "EvalResult":
        """A result read back from `to_dict` output (without rankings), e.g. to re-render a table."""
        return cls(dataset=obj["dataset"], split=obj["split"], system=obj["system"], k=obj["k"],
                   metrics=obj["metrics"], efficiency=obj["efficiency"], counts=obj["counts"],
                   settings={"model": obj.get("model", {}), "index": obj.get("index", {})},
                   conventions=obj.get("conventions", {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "split": self.split, "system": self.system, "k": self.k,
            "metrics": self.metrics, "efficiency": self.efficiency, "counts": self.counts,
            "model": self.settings.get("model", {}), "index": self.settings.get("index", {}),
            "conventions": self.conventions,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }


def _cut(ranked_batch: Sequence[Ranked], query_ids: Sequence[str], k: int,
         drop_self_hits: bool) -> dict[str, Ranked]:
    if drop_self_hits:
        return {qid: drop_self_hit(qid, ranked, k) for qid, ranked in zip(query_ids, ranked_batch)}
    return {qid: ranked[:k] for qid, ranked in zip(query_ids, ranked_batch)}


def _ms(values: list[float]) -> tuple[float, float]:
    """(mean, p99) of seconds, in milliseconds."""
    arr = np.asarray(values) * 1e3
    return float(arr.mean()), float(np.percentile(arr, 99))


def run_evaluation(collection: Collection, backend: SearchBackend, config: EvalConfig = EvalConfig(),
                   exact_backend: SearchBackend | None = None) -> EvalResult:
    """Evaluate `backend` on the judged queries of `collection`.

    `exact_backend`, for an approximate `backend`, must search the same encoded queries over the
    same documents; it gives the recall of the approximation. Rankings are kept on the result.
    """
    measures = parse_measures(config.measures, config.k)
    judged, skipped = judged_split(collection.queries, collection.qrels)
    if not judged:
        raise ValueError(f"{collection.name}/{collection.split}: no query in queries.jsonl has judgments")
    without_text = sorted(set(collection.qrels) - set(collection.queries))
    if without_text:
        log.warning("%s: %d judged query ids are not in queries.jsonl (not evaluated), e.g. %s",
                    collection.name, len(without_text), without_text[:5])
    unknown_docs = count_unknown_docs(collection.qrels, set(collection.doc_ids))
    if unknown_docs:
        log.warning("%s: %d qrels rows name documents not in the corpus (kept: relevant, never found)",
                    collection.name, unknown_docs)
    depth = config.k + 1 if config.drop_self_hits else config.k
    texts = [collection.queries[qid] for qid in judged]

    # warm-up outside the clocks: JIT compilation and caches of both the batched and the one-query path
    backend.search(backend.encode_queries(texts[:2]), depth, threads=config.threads)
    backend.search(backend.encode_queries(texts[:1]), depth, threads=1)
    if exact_backend is not None:
        exact_backend.search(backend.encode_queries(texts[:2]), depth)

    t0 = time.perf_counter()
    encoded = backend.encode_queries(texts)
    t1 = time.perf_counter()
    ranked = backend.search(encoded, depth, threads=config.threads)
    t2 = time.perf_counter()
    rankings = _cut(ranked, judged, config.k, config.drop_self_hits)
    log.info("%s on %s: %d queries searched in %.2f s", backend.name, collection.name, len(judged), t2 - t0)

    metrics = evaluate_rankings(rankings, collection.qrels, judged, measures)
    efficiency: dict[str, float] = {
        "qps": len(judged) / (t2 - t0),
        "search_qps": len(judged) / (t2 - t1),
        "batch_encode_s": t1 - t0,
        "batch_search_s": t2 - t1,
    }
    if config.measure_latency:
        total, search_only = [], []
        for text in texts:
            s0 = time.perf_counter()
            one = backend.encode_queries([text])
            s1 = time.perf_counter()
            backend.search(one, depth, threads=1)
            s2 = time.perf_counter()
            total.append(s2 - s0)
            search_only.append(s2 - s1)
        efficiency["latency_ms_mean"], efficiency["latency_ms_p99"] = _ms(total)
        efficiency["search_latency_ms_mean"], efficiency["search_latency_ms_p99"] = _ms(search_only)
    if not backend.exact and exact_backend is not None:
        exact = _cut(exact_backend.search(encoded, depth), judged, config.k, config.drop_self_hits)
        metrics[f"R@{config.overlap_depth} vs exact"] = overlap_at(rankings, exact, judged,
                                                                    config.overlap_depth)
    counts = {
        "docs": len(collection.doc_ids),
        "queries": len(collection.queries),
        "judged": len(judged),
        "skipped": len(skipped),
        "qrels_rows": sum(len(v) for v in collection.qrels.values()),
        "unknown_doc_qrels": unknown_docs,
        "qrels_queries_without_text": len(without_text),
        # judged (query, document) pairs the self-hit rule makes unreachable (CISI has some)
        "self_id_qrels": sum(1 for qid in judged if qid in collection.qrels[qid]),
    }
    conventions = {
        "drop_self_hits": config.drop_self_hits,
        "judged": ">= 1 qrels row, any grade",
        "empty_ranking_scores": 0,
        "ranking_order": "as returned by the backend (rank-derived scores for trec_eval)",
        "unknown_doc_qrels": "kept in the qrels",
        "single_query_threads": 1,
        "batch_threads": config.threads,
    }
    return EvalResult(dataset=collection.name, split=collection.split, system=backend.name, k=config.k,
                      metrics=metrics, efficiency=efficiency, counts=counts, settings=backend.settings(),
                      conventions=conventions, rankings=rankings)
