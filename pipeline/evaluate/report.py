"""Evaluation output: a readable table, the JSON report, and TREC run files."""

from __future__ import annotations

import json
import math
from typing import Iterable, Mapping, Sequence

from pipeline.evaluate.metrics import Ranked
from pipeline.evaluate.runner import EvalResult
from pipeline.objstore.fs import resolve

# Efficiency columns: (header, efficiency keys, format)
# (end to end = query encoding + search; "search" = the index alone on encoded queries)
_SPEED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("latency ms mean / p99", ("latency_ms_mean", "latency_ms_p99"), "{:.1f} / {:.1f}"),
    ("search ms mean / p99", ("search_latency_ms_mean", "search_latency_ms_p99"), "{:.2f} / {:.2f}"),
    ("QPS", ("qps",), "{:.0f}"),
    ("search QPS", ("search_qps",), "{:.0f}"),
)


def _metric_header(name: str) -> str:
    return "MRR" + name[2:] if name.startswith("RR@") else name  # trec_eval's RR@10 is MRR@10


def _number(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(results: Sequence[EvalResult], metrics: Iterable[str] | None = None) -> str:
    """A Markdown table, one row per result: the metrics (all, or those named), then speed."""
    if metrics is None:
        metrics = list(dict.fromkeys(name for r in results for name in r.metrics))
    metrics = list(metrics)
    speed = [s for s in _SPEED if any(all(key in r.efficiency for key in s[1]) for r in results)]
    header = ["collection", "system"] + [_metric_header(m) for m in metrics] + [s[0] for s in speed]
    rows = []
    for r in results:
        row = [r.dataset, r.system] + [_number(r.metrics.get(m), "{:.4f}") for m in metrics]
        for _, keys, fmt in speed:
            row.append(fmt.format(*(r.efficiency[key] for key in keys))
                       if all(key in r.efficiency for key in keys) else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def format_counts(result: EvalResult) -> str:
    """One line of the collection's counts, for the human-readable output."""
    c = result.counts
    return (f"{result.dataset} ({result.split}): {c['docs']} docs, {c['queries']} queries, "
            f"{c['judged']} judged, {c['skipped']} skipped (no judgments), {c['qrels_rows']} qrels rows, "
            f"{c['unknown_doc_qrels']} naming unknown documents, "
            f"{c['qrels_queries_without_text']} judged query ids without text")


def to_json(results: Sequence[EvalResult]) -> str:
    """One JSON object: a single result as itself, several under "results"."""
    if len(results) == 1:
        return json.dumps(results[0].to_dict(), indent=2, sort_keys=False)
    return json.dumps({"results": [r.to_dict() for r in results]}, indent=2)


def format_trec_run(rankings: Mapping[str, Ranked], tag: str, query_order: Sequence[str] | None = None) -> str:
    """TREC run text: ``qid Q0 docid rank score tag`` per line, ranks from 1 in the given order."""
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")
    lines = []
    for qid in (query_order if query_order is not None else rankings):
        if any(ch.isspace() for ch in qid):
            raise ValueError(f"query id {qid!r} contains whitespace: not writable in a TREC run")
        for rank, (doc_id, score) in enumerate(rankings.get(qid, []), 1):
            if any(ch.isspace() for ch in doc_id):
                raise ValueError(f"document id {doc_id!r} contains whitespace: not writable in a TREC run")
            lines.append(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_trec_run(url: str, rankings: Mapping[str, Ranked], tag: str,
                   query_order: Sequence[str] | None = None, storage_options: dict | None = None) -> None:
    """Write `rankings` as a TREC run file to a local path or fsspec URL."""
    text = format_trec_run(rankings, tag, query_order)
    loc = resolve(url, storage_options)
    parent = loc.path.rsplit("/", 1)[0]
    if parent and not loc.fs.exists(parent):
        loc.fs.makedirs(parent, exist_ok=True)
    with loc.fs.open(loc.path, "w", encoding="utf-8") as f:
        f.write(text)
