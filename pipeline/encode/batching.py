"""Token batches: padding lists of token ids, and length buckets that cut padding.

A batch is padded to its longest row, so sorting rows by length before batching makes each
batch nearly rectangular: the encoder body and the head then do almost no padding work.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pad_token_ids(rows: Sequence[Sequence[int]], pad_id: int,
                  side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 (n, longest row); pads on `side` ('right' or 'left')."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        input_ids[i, cols] = row
        attention_mask[i, cols] = 1
    return input_ids, attention_mask


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of `batch_size` rows of similar length, longest first.

    Concatenated, the batches are a permutation of range(len(lengths)); the sort is stable, so
    rows of equal length keep their input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
