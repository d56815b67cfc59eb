"""Effectiveness metrics with trec_eval semantics (through ir-measures), and BEIR's ranking conventions.

Conventions, stated once:
- A query is *judged* if the qrels hold at least one row for it, whatever the grade (a query whose
  rows are all grade 0 is judged and scores 0), as in BEIR and ir-measures. Only judged queries are
  evaluated; every judged query counts in the mean, an empty ranking scoring 0.
- Qrels rows naming documents that are not in the collection stay in the qrels (they are relevant
  documents the system cannot find, as trec_eval sees them); `count_unknown_docs` reports them.
- The ranking evaluated is the ranking the system returned, in its order: ir-measures receives
  rank-derived scores, so trec_eval's tie-break (by document id) never reorders equal scores.
- BEIR's self-hit rule: a query never retrieves the document with its own id (ArguAna). The hit is
  removed before the ranking is cut to k, so a backend is asked for k + 1.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import ir_measures

from pipeline.evaluate.beir import Qrels

Ranked = list[tuple[str, float]]  # (doc_id, score), best first

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "R@100", "R@1000", "RR@10")


def parse_measures(names: Iterable[str], k: int) -> list:
    """ir-measures objects for `names`; a cutoff deeper than k cannot be measured and is an error."""
    measures = []
    for name in names:
        try:
            measure = ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            raise ValueError(f"unknown measure {name!r}: {exc}") from None
        cutoff = measure.params.get("cutoff")
        if cutoff is not None and cutoff > k:
            raise ValueError(f"measure {name} needs rankings of depth {cutoff} but k={k}")
        measures.append(measure)
    return measures


def drop_self_hit(query_id: str, ranked: Ranked, k: int) -> Ranked:
    """The ranking without the document whose id equals the query id, cut to k."""
    return [hit for hit in ranked if hit[0] != query_id][:k]


def judged_split(query_ids: Iterable[str], qrels: Qrels) -> tuple[list[str], list[str]]:
    """(judged, skipped) query ids in the given order: judged = at least one qrels row."""
    judged, skipped = [], []
    for qid in query_ids:
        (judged if qrels.get(qid) else skipped).append(qid)
    return judged, skipped


def count_unknown_docs(qrels: Qrels, doc_ids: Iterable[str], query_ids: Iterable[str] | None = None) -> int:
    """Qrels rows (of the given queries, default all) whose document is not in the collection."""
    known = doc_ids if isinstance(doc_ids, (set, frozenset)) else set(doc_ids)
    wanted = qrels.keys() if query_ids is None else query_ids
    return sum(1 for qid in wanted for did in qrels.get(qid, {}) if did not in known)


def evaluate_rankings(rankings: Mapping[str, Ranked], qrels: Qrels, judged: Sequence[str],
                      measures: Sequence) -> dict[str, float]:
    """Mean of each measure over `judged` (missing or empty rankings score 0), by measure name."""
    if not judged:
        raise ValueError("no judged queries to evaluate")
    sub_qrels = {qid: qrels[qid] for qid in judged}
    run = {qid: {doc_id: float(len(ranked) - rank) for rank, (doc_id, _) in enumerate(ranked)}
           for qid in judged if (ranked := rankings.get(qid))}
    totals = {str(m): 0.0 for m in measures}
    for metric in ir_measures.iter_calc(list(measures), sub_qrels, run):
        totals[str(metric.measure)] += metric.value
    return {name: total / len(judged) for name, total in totals.items()}


def overlap_at(approx: Mapping[str, Ranked], exact: Mapping[str, Ranked], query_ids: Sequence[str],
               depth: int = 10) -> float:
    """Mean recall@depth of `approx` against `exact` top-depth (queries with an empty exact list skipped)."""
    values = []
    for qid in query_ids:
        truth = {doc_id for doc_id, _ in exact.get(qid, [])[:depth]}
        if not truth:
            continue
        found = {doc_id for doc_id, _ in approx.get(qid, [])[:depth]}
        values.append(len(truth & found) / len(truth))
    return sum(values) / len(values) if values else float("nan")
