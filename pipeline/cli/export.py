"""`lsr export INDEX OUT`: write a committed generation's document vectors as JSONL.

One line a document, in shard order (corpus order for a job-built index), in the shape
`lsr index --format vectors` reads back (Anserini's JsonVectorCollection):
``{"id": "d1", "vector": {"2054": 1.25, ...}}`` with term ids as keys, or tokens with
``--keys tokens`` (through the tokenizer of the model the index recorded). The weights are
the stored ones (float16 unless the index kept float32), so re-indexing the export gives
the same vectors and the same search results.
"""

from __future__ import annotations

import json

import typer

from pipeline.cli.common import parse_json_option


def export(
    index: str = typer.Argument(..., help="Index root written by `lsr index` (local or s3://)."),
    out: str = typer.Argument(..., help="Output JSONL file (local path or URL; .gz compresses)."),
    keys: str = typer.Option("ids", help="ids: term ids as keys; tokens: token strings."),
    generation: int = typer.Option(None, help="Export this generation instead of the live one."),
    storage_options: str = typer.Option(None, help="JSON object passed to fsspec."),
) -> None:
    """Export an index's document vectors (pre-encoded vectors for `lsr index --format vectors`)."""
    import fsspec
    import numpy as np

    from pipeline.catalog import IndexLayout, read_manifest
    from pipeline.format import read_postings

    if keys not in ("ids", "tokens"):
        raise typer.BadParameter("--keys must be ids or tokens")
    options = parse_json_option(storage_options, "--storage-options")
    layout = IndexLayout.at(index, options)
    manifest = read_manifest(layout, generation)
    names = None
    if keys == "tokens":
        if not manifest.encoder.get("model"):
            from pipeline.errors import UserError

            raise UserError(
                "--keys tokens needs the index's tokenizer, and this index has none: it was "
                f"built from pre-encoded vectors with --vocab {manifest.encoder.get('vocab')} and "
                "no --model; pass --keys ids")
        from pipeline.encode.models import resolve_model
        from pipeline.encode.tokens import load_tokenizer

        tokenizer = load_tokenizer(resolve_model(manifest.encoder["model"]))
        names = np.asarray(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), object)
    written = 0
    with fsspec.open(out, "wt", encoding="utf-8", compression="infer", **options) as f:
        for entry in manifest.shards:
            postings = read_postings(layout.postings(entry.name))
            csr = postings.vectors
            for row, doc_id in enumerate(postings.doc_ids):
                lo, hi = csr.indptr[row], csr.indptr[row + 1]
                terms = csr.indices[lo:hi]
                labels = names[terms] if names is not None else (str(int(t)) for t in terms)
                vector = {str(t): float(v) for t, v in zip(labels, csr.data[lo:hi])}
                f.write(json.dumps({"id": str(doc_id), "vector": vector}) + "\n")
                written += 1
    typer.echo(f"exported {written} documents of generation {manifest.generation} to {out}")
