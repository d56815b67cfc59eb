"""`lsr info INDEX`: what a committed generation holds, and how its shards were built.

Reads the manifest and each shard's index attributes, never an index array. For a blocked
shard it shows the build and search parameters and, for each one derived from the shard
rather than given, the rule and the shard statistics it came from
(`BlockedIndexConfig.derivation`): the defaults that fit the collection, shown.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import typer

from pipeline.cli.common import parse_json_option

INFO_READERS = 16
"""Shards whose index attributes `gather` reads at once."""


def gather(index: str, generation: int | None, storage_options: dict) -> dict:
    """The generation's manifest summary and, per shard, its manifest entry and what its index
    group adds (`index_info`), as one dict."""
    from pipeline.catalog import IndexLayout, list_generations, read_current_generation, read_manifest
    from pipeline.format import index_info

    layout = IndexLayout.at(index, storage_options)
    manifest = read_manifest(layout, generation)

    def shard(entry) -> dict:
        loc = layout.index(entry.name)
        return {"name": entry.name, "kind": entry.index_kind, "n_docs": entry.n_docs,
                "nnz": entry.nnz, "index_nbytes": entry.index_nbytes,
                **index_info(loc.url, loc.storage_options, entry.index_kind, entry.n_docs)}

    # a few small reads a shard: on object storage their round trips, not their bytes, add up
    with ThreadPoolExecutor(max_workers=INFO_READERS) as pool:
        shards = list(pool.map(shard, manifest.shards))
    return {"index": index, "generation": manifest.generation,
            "current": read_current_generation(layout), "generations": list_generations(layout),
            "created_at": manifest.created_at, "parent_generation": manifest.parent_generation,
            "encoder": manifest.encoder, "corpus": manifest.corpus, "counts": manifest.counts,
            "fields": [f.get("name") for f in manifest.fields], "n_docs": manifest.n_docs,
            "nnz": manifest.nnz, "shards": shards}


def render(info: dict) -> list[str]:
    """The text view of `gather`'s dict: a header, then a few lines a shard."""
    enc = info["encoder"]
    model = enc.get("model") or "none (pre-encoded vectors)"
    lines = [
        f"index {info['index']}: generation {info['generation']} "
        f"(current {info['current']}; kept {', '.join(map(str, info['generations']))})",
        f"  created {info['created_at']}"
        + (f" from generation {info['parent_generation']}" if info["parent_generation"] else ""),
        f"  encoder {model}" + (f", queries up to {enc['query_max_length']} tokens"
                                if enc.get("query_max_length") else ""),
        f"  corpus {info['corpus'].get('url', '?')} ({info['corpus'].get('format', '?')})",
        "  counts " + ", ".join(f"{k} {v:,}" for k, v in info["counts"].items()),
        f"  {len(info['shards'])} shards, {info['n_docs']:,} documents, {info['nnz']:,} postings"
        + (f"; fields {', '.join(info['fields'])}" if info["fields"] else ""),
    ]
    for s in info["shards"]:
        size = (f"{s['index_nbytes'] / 1e6:.1f} MB of index in memory" if s["index_nbytes"]
                else "index size not recorded")
        lines.append(f"  {s['name']}: {s['kind']}, {s['n_docs']:,} documents, "
                     f"{s['nnz']:,} postings, {size}")
        if s["kind"] != "blocked":
            continue
        config, why = s["config"], s["derivation"]
        for name, value in config.items():
            if name == "derived":
                continue
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"    {name} = {shown}" + (f"  (derived: {why[name]})" if name in why
                                                     else ""))
        unexplained = [n for n in config.get("derived", ()) if n not in why]
        if unexplained:
            lines.append(f"    derived from the shard: {', '.join(unexplained)} (the statistics "
                         "they came from were not recorded: an index built before 2026-12-05)")
    return lines


def info(
    index: str = typer.Argument(..., help="Index root written by `lsr index` (local or s3://)."),
    generation: int = typer.Option(None, help="Show this generation instead of the live one."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
    storage_options: str = typer.Option(None, help="JSON object passed to fsspec."),
) -> None:
    """Show a committed generation: its shards, and how each shard's index parameters were
    derived."""
    found = gather(index, generation, parse_json_option(storage_options, "--storage-options"))
    if json_out:
        typer.echo(json.dumps(found, indent=2))
    else:
        typer.echo("\n".join(render(found)))
