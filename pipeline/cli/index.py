"""`lsr index CORPUS OUTPUT`: the distributed indexing job."""

from __future__ import annotations

from typing import Optional

import typer

from pipeline.batch.config import (BLOCK_ROWS, ENCODE_BATCH_SIZE, MAX_LENGTH, MODEL, QUERY_MAX_LENGTH,
                                   SHARD_SIZE, VECTOR_BLOCK_ROWS)
from pipeline.catalog.gc import GC_MIN_AGE_S, KEEP_GENERATIONS
from pipeline.catalog.writer_lock import LOCK_TTL_S
from pipeline.cli.common import echo_json, parse_json_option, parse_key_values


def index(
    corpus: str = typer.Argument(..., help="JSONL / Parquet file, folder of them, or BEIR folder; local path or s3:// URL. "
                                           "With --format vectors: pre-encoded vectors in JSONL / Parquet."),
    output: str = typer.Argument(..., help="Index root: local directory or s3:// URL."),
    format: str = typer.Option("auto", help="auto, jsonl, parquet, beir, or vectors: pre-encoded sparse vectors "
                                            "(a JSONL 'vector' object of term -> weight, as Anserini and Seismic "
                                            "write, or list columns indices|tokens + values); nothing is encoded."),
    id_field: str = typer.Option(None, help="Id field (default: _id, id, docid or doc_id)."),
    title_field: str = typer.Option("title", help="Title field ('' for none)."),
    text_field: str = typer.Option("text", help="Text field."),
    model: str = typer.Option(None, help=f"SPLADE model: alias, local directory or Hugging Face id (default "
                                         f"{MODEL}). With --format vectors: the query model, whose tokenizer "
                                         f"also maps tokens to ids (give it or --vocab)."),
    vector_keys: str = typer.Option("tokens", help="--format vectors: keys of a 'vector' object are tokens, or "
                                                   "ids (decimal term ids). List columns say it themselves."),
    vocab: str = typer.Option(None, help="--format vectors: vocab.txt (one token a line, line number = id) that "
                                         "maps tokens to ids instead of --model's tokenizer. Without --model "
                                         "the index has no query model (no text queries)."),
    field: list[str] = typer.Option(None, "--field", help="Keep a corpus field per document, NAME:TYPE "
                                    "(repeatable). TYPE keyword, int, float or bool (filterable and "
                                    "returnable) or stored (returnable only). A bad value is a bad record."),
    max_length: int = typer.Option(MAX_LENGTH, help="Document truncation, in tokens."),
    query_max_length: int = typer.Option(QUERY_MAX_LENGTH, help="Query truncation, in tokens (recorded for search)."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, float16, bfloat16."),
    batch_size: int = typer.Option(ENCODE_BATCH_SIZE, help="Documents per encoder forward pass."),
    top_k: int = typer.Option(None, help="Keep at most this many terms per document."),
    threshold: float = typer.Option(0.0, help="Drop term weights <= this."),
    shard_size: int = typer.Option(SHARD_SIZE, help="Target documents per shard: each file is cut into the fewest "
                                                    "equal parts of at most this many (JSONL over 1 MiB: by bytes, "
                                                    "from its first MiB's mean record length)."),
    block_rows: Optional[int] = typer.Option(None, help=f"Documents per read block: the unit of resume after a crash (default: {BLOCK_ROWS} for text, {VECTOR_BLOCK_ROWS} for --format vectors)."),
    index_kind: str = typer.Option("blocked", help="blocked (Seismic-style) or exact."),
    index_param: list[str] = typer.Option(None, help="Blocked index parameter KEY=VALUE (repeatable), e.g. n_postings=2000."),
    values_dtype: str = typer.Option("float32", help="Stored postings values: float32 or float16."),
    on_bad_record: str = typer.Option("fail", help="fail: stop at the first bad record; skip: write it to OUTPUT/rejects/."),
    keep_generations: int = typer.Option(KEEP_GENERATIONS, help="Generations kept for rollback and live readers."),
    gc_min_age_s: float = typer.Option(GC_MIN_AGE_S, help="Staging and uncommitted shards are "
                                                          "deleted only when idle this long."),
    lock_ttl_s: float = typer.Option(LOCK_TTL_S, help="Writer lock lifetime without renewal: a crashed "
                                                       "run's lock is taken over after this."),
    address: str = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)."),
    num_encoders: int = typer.Option(None, help="Encoder actors (default: one per GPU, or by CPU count)."),
    encoder_cpus: float = typer.Option(None, help="CPUs reserved per encoder actor."),
    encoder_gpus: float = typer.Option(None, help="GPUs per encoder actor (default 1 when the cluster has GPUs)."),
    storage_options: str = typer.Option(None, help="JSON object passed to fsspec (e.g. S3 endpoint, credentials)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Encode a corpus with a SPLADE model on Ray, write sharded postings and indexes, commit a generation.

    With --format vectors the corpus is already encoded: vectors are validated and indexed as given."""
    from pipeline.batch import EncoderOptions, IndexJobConfig, ResourceOptions, run_index_job

    try:
        config = IndexJobConfig(
            corpus=corpus, output=output, format=format, id_field=id_field,
            title_field=title_field or None, text_field=text_field, shard_size=shard_size,
            block_rows=block_rows,
            values_dtype=values_dtype, index_kind=index_kind,
            index_params=parse_key_values(index_param, "--index-param"),
            on_bad_record=on_bad_record, keep_generations=keep_generations, gc_min_age_s=gc_min_age_s, lock_ttl_s=lock_ttl_s,
            storage_options=parse_json_option(storage_options, "--storage-options"),
            vector_keys=vector_keys, vocab=vocab, fields=tuple(field or ()),
            encoder=EncoderOptions(model=model if model or format == "vectors" else MODEL, max_length=max_length, query_max_length=query_max_length,
                                   dtype=dtype, batch_size=batch_size, top_k=top_k, threshold=threshold),
            resources=ResourceOptions(address=address, num_encoders=num_encoders,
                                      encoder_cpus=encoder_cpus, encoder_gpus=encoder_gpus),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    summary = run_index_job(config)
    if as_json:
        echo_json(summary.to_json())
        return
    typer.echo(f"index      {summary.output} (generation {summary.generation})")
    typer.echo(f"documents  {summary.docs_in} read, {summary.docs_indexed} indexed, "
               f"{summary.docs_rejected} rejected, {summary.docs_empty} empty")
    typer.echo(f"shards     {summary.shards} ({summary.shards_reused} reused from an interrupted run)"
               if summary.resumed else f"shards     {summary.shards}")
    typer.echo(f"postings   {summary.nnz} non-zeros")
    typer.echo(f"time       {summary.wall_s:.1f} s, {summary.docs_per_s:.1f} docs/s end to end")
    for name, stage in summary.stages.items():
        if stage["busy_s"]:
            typer.echo(f"  {name:<9} {stage['busy_s']:>9.2f} busy-s  {stage['docs_per_busy_s'] or 0:>9.1f} docs/busy-s")
    if summary.bound_stage:
        typer.echo(f"bound by   {summary.bound_stage}")
