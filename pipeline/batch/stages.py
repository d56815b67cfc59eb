"""The per-batch work of the job: tokenize (CPU tasks) and encode (actor pool with the model).

Rows carry `shard`, `seq` and `row` (their place in the plan) through every stage, so the
output can be reassembled in corpus order whatever order Ray runs things in. Token ids
travel as variable-length lists (no padding in the object store); the encoder actor pads
per length bucket. Each stage adds its busy time per row (t_read, t_tokenize, t_encode)
so the summary can say which stage bounds throughput.

A row whose `text` is null is not encoded: it passes through with no token ids, empty
vectors and `encoded = false` (re-indexing nulls the text of documents whose stored vectors
it reuses). A row whose text is "" (an empty document) is not run through the model either:
its vector is empty (no query retrieves it) and `encoded = true`. Vectors travel as Arrow
large_list (64-bit offsets), so a block is never limited to 2^31 postings. Columns a stage does not consume pass through it unchanged, so an earlier stage
can attach what the commit step needs (re-indexing attaches each row's base location).

A pre-encoded vectors corpus skips tokenize and encode: its read blocks are already in the
encode stage's output form (`pipeline.batch.datasource.vector_block`). An extra stage written
for text rows (re-indexing's classification) runs on them through `on_vector_rows`.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import numpy as np
import pyarrow as pa

from pipeline.encode.tokens import token_ids
from pipeline.batch.config import EncoderOptions
from pipeline.format.postings import fingerprint_texts

log = logging.getLogger(__name__)

def _replace_columns(batch: pa.Table, drop: list[str], add: dict[str, pa.Array]) -> pa.Table:
    """`batch` without the `drop` columns, with `add` appended (replacing same-named ones)."""
    keep = [c for c in batch.column_names if c not in drop and c not in add]
    out = batch.select(keep)
    for name, column in add.items():
        out = out.append_column(name, column)
    return out


@lru_cache(maxsize=4)
def _tokenizer(model: str):
    from pipeline.encode.models import resolve_model
    from pipeline.encode.tokens import load_tokenizer

    return load_tokenizer(resolve_model(model))


def tokenize_batch(batch: pa.Table, options: EncoderOptions) -> pa.Table:
    """Read rows -> token-id lists, with the document fingerprint; text is dropped here.

    A `fingerprint` column already present is kept; rows with null text get no token ids.
    """
    started = time.perf_counter()
    texts = batch.column("text").to_pylist()
    todo = [i for i, text in enumerate(texts) if text]
    ids = token_ids(_tokenizer(options.model), [texts[i] for i in todo], options.max_length)
    n = len(texts)
    lengths = np.zeros(n, dtype=np.int32)
    lengths[todo] = [len(x) for x in ids]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    added = {"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
             "reused": pa.array([t is None for t in texts], pa.bool_())}
    if "fingerprint" not in batch.column_names:
        added["fingerprint"] = pa.array(fingerprint_texts(texts), pa.uint64())
    elapsed = (time.perf_counter() - started) / max(n, 1)
    added["t_tokenize"] = pa.array(np.full(n, elapsed), pa.float64())
    return _replace_columns(batch, ["text"], added)


class EncodeActor:
    """Holds one SpladeEncoder; turns token-id lists into sparse vectors (Arrow lists)."""

    def __init__(self, options: EncoderOptions, device: str = "auto", torch_threads: int | None = None):
        import torch

        from pipeline.encode import SpladeEncoder

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.options = options
        self.encoder = SpladeEncoder(options.model, device=device, max_length=options.max_length,
                                     query_max_length=options.query_max_length, dtype=options.dtype,
                                     batch_size=options.batch_size, top_k=options.top_k,
                                     threshold=options.threshold)
        self.pad_id = self.encoder.tokenizer.pad_token_id or 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        ids_col = batch.column("input_ids").combine_chunks()
        offsets = ids_col.offsets.to_numpy().astype(np.int64)
        flat = ids_col.values.to_numpy()
        lengths = np.diff(offsets)
        n = len(lengths)
        todo = np.flatnonzero(lengths > 0)           # rows without token ids are not encoded
        order = todo[np.argsort(-lengths[todo], kind="stable")]  # length buckets cut padding
        indptr = np.zeros(n + 1, dtype=np.int64)
        row_indices: list[np.ndarray] = [np.zeros(0, np.int32)] * n
        row_values: list[np.ndarray] = [np.zeros(0, np.float32)] * n
        step = self.options.batch_size
        for start in range(0, len(order), step):
            rows = order[start:start + step]
            width = int(lengths[rows].max())
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                length = lengths[r]
                input_ids[j, :length] = flat[offsets[r]:offsets[r + 1]]
                mask[j, :length] = 1
            vectors = self.encoder.encode_tokenized(input_ids, mask)
            for j, r in enumerate(rows):
                lo, hi = vectors.indptr[j], vectors.indptr[j + 1]
                row_indices[r] = vectors.indices[lo:hi]
                row_values[r] = vectors.data[lo:hi]
        for r in range(n):
            indptr[r + 1] = indptr[r] + len(row_indices[r])
        flat_idx = np.concatenate(row_indices).astype(np.int32) if n else np.zeros(0, np.int32)
        flat_val = np.concatenate(row_values).astype(np.float32) if n else np.zeros(0, np.float32)
        # Encoded: every row but those whose stored vectors are reused (empty documents too).
        encoded = ~batch.column("reused").to_numpy(zero_copy_only=False)
        elapsed = (time.perf_counter() - started) / max(n, 1)
        return _replace_columns(batch, ["input_ids", "reused"], {
            "indices": pa.LargeListArray.from_arrays(pa.array(indptr), pa.array(flat_idx)),
            "values": pa.LargeListArray.from_arrays(pa.array(indptr), pa.array(flat_val)),
            "encoded": pa.array(encoded, pa.bool_()),
            "t_encode": pa.array(np.full(n, elapsed), pa.float64()),
        })


def on_vector_rows(batch: pa.Table, fn, fn_kwargs: dict) -> pa.Table:
    """Run a stage written for read rows (`fn(batch, **fn_kwargs)`, e.g. re-indexing's
    `classify_batch`) on pre-encoded vector rows, with the text-row contract: each row goes in
    with a placeholder text "" and its `fingerprint`; a row whose text comes back null is
    reused, so it leaves with `encoded = false` and an empty vector, as the encode stage
    leaves such rows."""
    n = batch.num_rows
    out = fn(batch.append_column("text", pa.array([""] * n, pa.string())), **fn_kwargs)
    reused = out.column("text").is_null().to_numpy(zero_copy_only=False)
    if reused.any():
        lists = {name: out.column(name).combine_chunks() for name in ("indices", "values")}
        lengths = np.diff(lists["indices"].offsets.to_numpy())
        keep = pa.array(np.repeat(~reused, lengths))      # per posting: its row is not reused
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.where(reused, 0, lengths), out=indptr[1:])
        out = _replace_columns(out, [], {
            name: pa.LargeListArray.from_arrays(pa.array(indptr), lists[name].flatten().filter(keep))
            for name in ("indices", "values")})
    encoded = pa.array(~reused & out.column("encoded").to_numpy(zero_copy_only=False), pa.bool_())
    return _replace_columns(out, ["text"], {"encoded": encoded})
