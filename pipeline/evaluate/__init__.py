"""Evaluation on BEIR collections: loaders, metrics (ir-measures), the runner, reports, BM25 baseline.

    collection = load_collection("/data/scifact")
    result = run_evaluation(collection, backend, EvalConfig(k=1000), exact_backend)
    print(format_table([result]))

Reads indexes through `pipeline.search` and `pipeline.index`; must not import `pipeline.batch`,
`pipeline.serve` or `pipeline.cli` (`lsr evaluate` lives in `pipeline.cli.evaluate`).
"""

from pipeline.evaluate.backends import SearchBackend, SpladeBackend
from pipeline.evaluate.beir import DatasetError, iter_corpus, load_qrels, load_queries, open_beir
from pipeline.evaluate.metrics import DEFAULT_MEASURES, drop_self_hit, evaluate_rankings
from pipeline.evaluate.report import format_table, to_json, write_trec_run
from pipeline.evaluate.runner import Collection, EvalConfig, EvalResult, load_collection, run_evaluation

__all__ = [
    "Collection", "DEFAULT_MEASURES", "DatasetError", "EvalConfig", "EvalResult", "SearchBackend",
    "SpladeBackend", "drop_self_hit", "evaluate_rankings", "format_table", "iter_corpus", "load_collection",
    "load_qrels", "load_queries", "open_beir", "run_evaluation", "to_json", "write_trec_run",
]
