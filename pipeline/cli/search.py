"""`lsr search INDEX "query"`: answer from a finished index in process (all shards, merged)."""

from __future__ import annotations

import json
import time

import typer

from pipeline.cli.common import echo_json, parse_json_option


def search(
    index: str = typer.Argument(..., help="Index root written by `lsr index` (local or s3://)."),
    query: list[str] = typer.Argument(..., help="One or more query strings."),
    k: int = typer.Option(10, "--k", "-k", help="Results per query."),
    exact: bool = typer.Option(False, help="Exact dot-product search instead of the blocked index."),
    query_cut: int = typer.Option(None, help="Blocked index: query terms visited (default from the index)."),
    heap_factor: float = typer.Option(None, help="Blocked index: block skipping factor (default from the index)."),
    generation: int = typer.Option(None, help="Search this generation instead of the live one."),
    storage_options: str = typer.Option(None, help="JSON object passed to fsspec."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    filter_json: str = typer.Option(None, "--filter", help='Filter as JSON, e.g. \'{"term": {"lang": "en"}}\' (README: "Filters, stored fields, explain").'),
    fields: str = typer.Option(None, "--fields", help="Comma-separated fields to return with each hit."),
    explain: bool = typer.Option(False, "--explain", help="Return each hit's term contributions."),
) -> None:
    """Search a committed index from the command line.

    Queries are encoded as the index's manifest records: by the model, or, for an inference-free
    model, by its static token weights alone (no network is loaded). `--filter` restricts the
    hits to documents whose fields match; `--fields` and `--explain` add to each hit.
    """
    from pipeline.search import ShardedIndex

    if not 1 <= k <= 10_000:
        raise typer.BadParameter("k must be between 1 and 10000")
    opened = ShardedIndex.open(index, parse_json_option(storage_options, "--storage-options"),
                               generation=generation)
    flt = opened.compile_filter(_parse_filter(filter_json)) if filter_json else None
    names = [n.strip() for n in fields.split(",") if n.strip()] if fields else None
    query_encoder = opened.encoder()  # the endpoint's query encoder, loaded before the clock starts
    params = {key: v for key, v in (("query_cut", query_cut), ("heap_factor", heap_factor)) if v is not None}
    started = time.perf_counter()
    results = opened.search_vectors(query_encoder.encode_queries(list(query)), k=k, exact=exact, filter=flt,
                                    fields=names, explain=explain, **params)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if as_json:
        echo_json({"generation": opened.generation, "exact": exact, "took_ms": round(elapsed_ms, 3),
                   "results": [{"query": q, "hits": [h.to_json() for h in hits]}
                               for q, hits in zip(query, results)]})
        return
    for q, hits in zip(query, results):
        typer.echo(f"query: {q}")
        for rank, hit in enumerate(hits, 1):
            typer.echo(f"  {rank:>3}. {hit.score:9.4f}  {hit.doc_id}")
            for name, value in (hit.fields or {}).items():
                typer.echo(f"         {name}: {json.dumps(value, ensure_ascii=False)}")
            if hit.explain:
                typer.echo("         " + ", ".join(f"{c['token']} {c['contribution']:.3f}" for c in hit.explain[:10]))
    typer.echo(f"({len(query)} queries, generation {opened.generation}, {elapsed_ms:.1f} ms)")


def _parse_filter(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--filter must be JSON: {exc}") from None
