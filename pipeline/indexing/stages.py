"""The per-batch work of the job: tokenize (CPU tasks) and encode (actor pool with the model).

Rows carry `shard`, `seq` and `row` (their place in the plan) through every stage, so the
output can be reassembled in corpus order whatever order Ray runs things in. Token ids
travel as variable-length lists (no padding in the object store); the encoder actor pads
per length bucket. Each stage adds its busy time per row (t_read, t_tokenize, t_encode)
so the summary can say which stage bounds throughput.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import numpy as np
import pyarrow as pa

from pipeline.indexing.config import EncoderOptions
from pipeline.store.postings import fingerprint_texts

log = logging.getLogger(__name__)

ENCODED_SCHEMA = pa.schema([
    ("shard", pa.int32()), ("seq", pa.int32()), ("row", pa.int64()),
    ("doc_id", pa.string()), ("offset", pa.int64()), ("fingerprint", pa.uint64()),
    ("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32())),
    ("t_read", pa.float64()), ("t_tokenize", pa.float64()), ("t_encode", pa.float64()),
])


@lru_cache(maxsize=4)
def _tokenizer(model: str):
    from transformers import AutoTokenizer

    from pipeline.encode.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(model))


def tokenize_batch(batch: pa.Table, options: EncoderOptions) -> pa.Table:
    """Read rows -> token-id lists, with the document fingerprint; text is dropped here."""
    started = time.perf_counter()
    texts = batch.column("text").to_pylist()
    ids = _tokenizer(options.model)(texts, max_length=options.max_length, truncation=True,
                                    padding=False, return_attention_mask=False,
                                    return_token_type_ids=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    n = len(texts)
    elapsed = (time.perf_counter() - started) / max(n, 1)
    return pa.table({
        "shard": batch.column("shard"), "seq": batch.column("seq"), "row": batch.column("row"),
        "doc_id": batch.column("doc_id"), "offset": batch.column("offset"),
        "fingerprint": pa.array(fingerprint_texts(texts), pa.uint64()),
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "t_read": batch.column("t_read"),
        "t_tokenize": pa.array(np.full(n, elapsed), pa.float64()),
    })


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
        order = np.argsort(-lengths, kind="stable")  # length buckets cut padding
        indptr = np.zeros(n + 1, dtype=np.int64)
        row_indices: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        row_values: list[np.ndarray] = [None] * n   # type: ignore[list-item]
        step = self.options.batch_size
        for start in range(0, n, step):
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
        elapsed = (time.perf_counter() - started) / max(n, 1)
        return pa.table({
            "shard": batch.column("shard"), "seq": batch.column("seq"), "row": batch.column("row"),
            "doc_id": batch.column("doc_id"), "offset": batch.column("offset"),
            "fingerprint": batch.column("fingerprint"),
            "indices": pa.ListArray.from_arrays(pa.array(indptr.astype(np.int32)), pa.array(flat_idx)),
            "values": pa.ListArray.from_arrays(pa.array(indptr.astype(np.int32)), pa.array(flat_val)),
            "t_read": batch.column("t_read"), "t_tokenize": batch.column("t_tokenize"),
            "t_encode": pa.array(np.full(n, elapsed), pa.float64()),
        }, schema=ENCODED_SCHEMA)
