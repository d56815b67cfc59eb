"""``lsr evaluate DATASET``: effectiveness and efficiency of the pipeline on a BEIR collection."""

from __future__ import annotations

import logging
from typing import Optional

import typer

from pipeline.evaluate.beir import DatasetError
from pipeline.evaluate.metrics import DEFAULT_MEASURES
from pipeline.evaluate.report import format_counts, format_table, to_json, write_trec_run
from pipeline.evaluate.runner import (Collection, EvalConfig, EvalResult, encode_documents, load_collection,
                                      run_evaluation)

log = logging.getLogger(__name__)


def splade_backends(collection: Collection, *, model: str, max_length: int, query_max_length: int,
                    exact: bool):
    """Encode and index the collection in this process: (backend, exact backend or None)."""
    from pipeline.encode import SpladeEncoder
    from pipeline.evaluate.backends import SpladeBackend

    encoder = SpladeEncoder(model=model, max_length=max_length, query_max_length=query_max_length)
    log.info("encoding %d documents of %s with %s", len(collection.doc_ids), collection.name, model)
    docs = encode_documents(encoder, collection.texts)   # empty documents: empty vectors, as indexed
    exact_backend = SpladeBackend.build(collection.doc_ids, docs, encoder, exact=True)
    if exact:
        return exact_backend, None
    return SpladeBackend.build(collection.doc_ids, docs, encoder, exact=False), exact_backend


def evaluate(
    dataset: str = typer.Argument(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv), "
                                             "local path or URL."),
    split: str = typer.Option("test", help="Qrels file to evaluate on: qrels/SPLIT.tsv."),
    exact: bool = typer.Option(False, "--exact", help="Exact search (ExactIndex) instead of the "
                                                      "approximate blocked index."),
    k: int = typer.Option(1000, "--k", min=1, help="Ranking depth."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    run_file: Optional[str] = typer.Option(None, "--run-file", help="Write the SPLADE ranking as a "
                                                                     "TREC run file."),
    index: Optional[str] = typer.Option(None, "--index", help="Evaluate an index written by `lsr index` "
                                        "over this collection (local or s3://) instead of indexing here."),
    generation: Optional[int] = typer.Option(None, help="With --index: this generation, not the live one."),
    query_cut: Optional[int] = typer.Option(None, min=1, help="With --index: blocked-index query_cut."),
    heap_factor: Optional[float] = typer.Option(None, help="With --index: blocked-index heap_factor."),
    storage_options: Optional[str] = typer.Option(None, help="JSON object passed to fsspec for DATASET, "
                                                             "--index and --run-file."),
    model: str = typer.Option("splade-tiny", help="SPLADE model: alias, directory or hub id "
                                                  "(without --index; an index brings its own). A directory "
                                                  "may be a masked-LM, a causal LM, a sentence-transformers "
                                                  "SparseEncoder (Router too) or a masked-LM with idf.json "
                                                  "(inference-free queries)."),
    max_length: int = typer.Option(256, min=1, help="Document truncation, tokens (without --index)."),
    query_max_length: int = typer.Option(64, min=1, help="Query truncation, tokens (without --index)."),
    bm25: bool = typer.Option(False, "--bm25", help="Also evaluate BM25 (bm25s, k1=0.9 b=0.4) for "
                                                    "orientation."),
    keep_self_hits: bool = typer.Option(False, "--keep-self-hits", help="Do not apply BEIR's rule that a "
                                        "query never retrieves the document with its own id."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure one-query-at-a-time "
                                                                      "latency."),
    threads: Optional[int] = typer.Option(None, min=1, help="Search threads for the batched pass."),
) -> None:
    """Evaluate retrieval quality (nDCG@10, R@100, R@1000, MRR@10) and speed on a BEIR collection.

    Without --index the collection is encoded and indexed in this process first.
    """
    from pipeline.cli.common import parse_json_option

    options = parse_json_option(storage_options, "--storage-options")
    measures = tuple(m for m in DEFAULT_MEASURES if _cutoff(m) <= k)
    try:
        config = EvalConfig(k=k, measures=measures, drop_self_hits=not keep_self_hits,
                            measure_latency=latency, threads=threads)
        collection = load_collection(dataset, split, with_texts=index is None or bm25,
                                     storage_options=options)
    except (DatasetError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if index is not None:
        from pipeline.evaluate.backends import ShardedBackend

        params = {key: v for key, v in (("query_cut", query_cut), ("heap_factor", heap_factor)) if v is not None}
        backend = ShardedBackend.open(index, options, generation=generation, exact=exact, search_params=params)
        from pipeline.encode.query import check_query_model

        check_query_model(backend.opened.manifest.encoder)  # one line, before any query is read
        exact_backend = None if backend.exact else backend.exact_twin()
        if backend.n_docs != len(collection.doc_ids):
            log.warning("index %s holds %d documents, %s has %d", index, backend.n_docs, collection.name,
                        len(collection.doc_ids))
    else:
        if query_cut is not None or heap_factor is not None or generation is not None:
            raise typer.BadParameter("--generation, --query-cut and --heap-factor need --index")
        backend, exact_backend = splade_backends(collection, model=model, max_length=max_length,
                                                 query_max_length=query_max_length, exact=exact)
    results: list[EvalResult] = [run_evaluation(collection, backend, config, exact_backend)]
    if bm25:
        from pipeline.evaluate.bm25 import BM25Backend

        results.append(run_evaluation(collection, BM25Backend(collection.doc_ids, collection.texts), config))
    if run_file is not None:
        write_trec_run(run_file, results[0].rankings, tag=results[0].system.split(" (")[0].replace(" ", "-"),
                       storage_options=options)
    if as_json:
        typer.echo(to_json(results))
    else:
        typer.echo(format_counts(results[0]))
        typer.echo(format_table(results))


def _cutoff(measure: str) -> int:
    return int(measure.rsplit("@", 1)[1]) if "@" in measure else 0
