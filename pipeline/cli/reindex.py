"""`lsr reindex CORPUS INDEX`: incremental re-indexing into a new generation, then GC."""

from __future__ import annotations

from typing import Optional

import typer

from pipeline.batch.config import BLOCK_ROWS, ENCODE_BATCH_SIZE, VECTOR_BLOCK_ROWS
from pipeline.catalog.gc import GC_MIN_AGE_S, KEEP_GENERATIONS
from pipeline.catalog.writer_lock import LOCK_TTL_S
from pipeline.cli.common import echo_json, parse_json_option, parse_key_values

AS_RECORDED = "default: as the live generation recorded it"


def reindex(
    corpus: str = typer.Argument(..., help="The new corpus snapshot (same forms as `lsr index`)."),
    index: str = typer.Argument(..., help="Index root written by `lsr index` (local or s3://)."),
    keep_generations: int = typer.Option(KEEP_GENERATIONS, help="Generations kept by garbage collection "
                                                 "(besides those leased by servers)."),
    full: bool = typer.Option(False, "--full", help="Re-encode everything into fresh shards."),
    on_bad_record: str = typer.Option("fail", help="fail: stop at the first bad record; skip: "
                                                   "write it to INDEX/rejects/."),
    block_rows: Optional[int] = typer.Option(None, help=f"Documents per read block: the unit of resume (default: {BLOCK_ROWS} for text, {VECTOR_BLOCK_ROWS} for --format vectors)."),
    shard_size: int = typer.Option(None, help=f"Target documents per shard ({AS_RECORDED})."),
    format: str = typer.Option(None, help=f"auto, jsonl, parquet, beir or vectors (pre-encoded; "
                                          f"{AS_RECORDED})."),
    vector_keys: str = typer.Option(None, help=f"--format vectors: 'vector' keys are tokens or ids "
                                               f"({AS_RECORDED})."),
    field: list[str] = typer.Option(None, "--field", help="Kept fields NAME:TYPE (repeatable), as for "
                                    "`lsr index`; default: as the live generation recorded. A change "
                                    "rebuilds everything."),
    vocab: str = typer.Option(None, help=f"--format vectors: vocab.txt mapping tokens to ids "
                                         f"({AS_RECORDED})."),
    id_field: str = typer.Option(None, help=f"Id field ({AS_RECORDED})."),
    title_field: str = typer.Option(None, help=f"Title field, '' for none ({AS_RECORDED})."),
    text_field: str = typer.Option(None, help=f"Text field ({AS_RECORDED})."),
    model: str = typer.Option(None, help=f"SPLADE model ({AS_RECORDED}); another model means "
                                         f"a full rebuild."),
    max_length: int = typer.Option(None, help=f"Document truncation in tokens ({AS_RECORDED})."),
    query_max_length: int = typer.Option(None, help=f"Query truncation ({AS_RECORDED})."),
    dtype: str = typer.Option(None, help=f"Encoder dtype ({AS_RECORDED})."),
    top_k: int = typer.Option(None, help=f"Terms kept per document, 0 for all ({AS_RECORDED})."),
    threshold: float = typer.Option(None, help=f"Drop weights <= this ({AS_RECORDED})."),
    batch_size: int = typer.Option(ENCODE_BATCH_SIZE, help="Documents per encoder forward pass."),
    index_kind: str = typer.Option(None, help=f"blocked or exact ({AS_RECORDED})."),
    index_param: list[str] = typer.Option(None, help="Blocked index parameter KEY=VALUE "
                                                     "(repeatable), over the recorded ones."),
    values_dtype: str = typer.Option(None, help=f"Stored postings values ({AS_RECORDED})."),
    gc_min_age_s: float = typer.Option(GC_MIN_AGE_S, help="Staging and uncommitted shards are "
                                                          "deleted only when idle this long."),
    lock_ttl_s: float = typer.Option(LOCK_TTL_S, help="Writer lock lifetime without renewal: a crashed "
                                                       "run's lock is taken over after this."),
    address: str = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)."),
    num_encoders: int = typer.Option(None, help="Encoder actors (default: one per GPU, or by CPU count)."),
    encoder_cpus: float = typer.Option(None, help="CPUs reserved per encoder actor."),
    encoder_gpus: float = typer.Option(None, help="GPUs per encoder actor."),
    storage_options: str = typer.Option(None, help="JSON object passed to fsspec."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Re-index a changed corpus: re-encode only added and changed documents, rebuild only the
    shards that changed, commit a new generation (CURRENT moves last), collect garbage."""
    from pipeline.batch import ResourceOptions
    from pipeline.batch import EncoderOverrides, ReindexConfig, run_reindex

    try:
        config = ReindexConfig(
            corpus=corpus, index=index, full=full, keep_generations=keep_generations,
            gc_min_age_s=gc_min_age_s, lock_ttl_s=lock_ttl_s, on_bad_record=on_bad_record, block_rows=block_rows,
            shard_size=shard_size, format=format, id_field=id_field, title_field=title_field,
            text_field=text_field, index_kind=index_kind, vector_keys=vector_keys, vocab=vocab,
            fields=tuple(field) if field else None,
            index_params=parse_key_values(index_param, "--index-param"), values_dtype=values_dtype,
            storage_options=parse_json_option(storage_options, "--storage-options"),
            encoder=EncoderOverrides(model=model, max_length=max_length,
                                     query_max_length=query_max_length, dtype=dtype, top_k=top_k,
                                     threshold=threshold, batch_size=batch_size),
            resources=ResourceOptions(address=address, num_encoders=num_encoders,
                                      encoder_cpus=encoder_cpus, encoder_gpus=encoder_gpus))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    summary = run_reindex(config)
    if as_json:
        echo_json(summary.to_json())
        return
    if summary.full_rebuild:
        typer.echo(f"FULL REBUILD: {summary.rebuild_reason}")
    elif summary.rebuild_reason:
        typer.echo(f"note       {summary.rebuild_reason}")
    state = "committed" if summary.committed else "unchanged, nothing committed"
    typer.echo(f"index      {summary.index} generation {summary.generation} ({state}; "
               f"base {summary.base_generation})")
    typer.echo(f"documents  {summary.docs_in} read, {summary.docs_indexed} indexed, "
               f"{summary.docs_rejected} rejected, {summary.docs_empty} empty")
    if not summary.full_rebuild:
        typer.echo(f"changes    {summary.docs_added} added, {summary.docs_changed} changed, "
                   f"{summary.docs_deleted} deleted, {summary.docs_unchanged} unchanged")
    typer.echo(f"encoded    {summary.docs_reencoded} documents")
    typer.echo(f"shards     {summary.shards}: {summary.shards_rebuilt} rebuilt, "
               f"{summary.shards_reused} reused, {summary.shards_added} added")
    gc = summary.gc
    if "error" in gc:
        typer.echo(f"gc         FAILED: {gc['error']}")
    else:
        typer.echo(f"gc         kept generations {gc['kept_generations']}, deleted "
                   f"{gc['deleted_generations']} and {len(gc['deleted_shards'])} shard(s)")
    typer.echo(f"time       {summary.wall_s:.1f} s")
