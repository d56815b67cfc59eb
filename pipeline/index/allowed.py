"""The documents a filter allows in one shard, in the forms the search kernels take.

Built once per (shard, filter) and shared by every query of a batch (and, through the
searcher's cache, by later requests with the same filter): the bool mask, the allowed rows
ascending (exact scoring of only them), and the *blocked* bitset (the complement, uint64
words, bit ``d & 63`` of word ``d >> 6``: the layout of the blocked index's visited set, so
a filtered query starts with the disallowed documents already marked visited).
"""

from __future__ import annotations

import numpy as np


class AllowedDocs:
    """Allowed documents of one shard of ``n_docs`` documents, from a bool mask."""

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.ndim != 1:
            raise ValueError(f"allowed: expected a 1-D bool mask, got {mask.dtype} "
                             f"with shape {mask.shape}")
        self.mask = np.ascontiguousarray(mask)
        self.docs = np.flatnonzero(mask).astype(np.int64)
        n_words = mask.size // 64 + 1          # the visited bitset's size
        packed = np.zeros(n_words * 8, np.uint8)
        bits = np.packbits(~mask, bitorder="little")
        packed[:bits.size] = bits
        # bits past n_docs stay 0: no document lives there
        if mask.size % 8:
            packed[bits.size - 1] &= np.uint8((1 << (mask.size % 8)) - 1)
        self.blocked_bits = packed.view("<u8").astype(np.uint64, copy=False)

    @property
    def n_docs(self) -> int:
        return int(self.mask.size)

    @property
    def count(self) -> int:
        return int(self.docs.size)

    @property
    def nbytes(self) -> int:
        return int(self.mask.nbytes + self.docs.nbytes + self.blocked_bits.nbytes)

    @classmethod
    def of(cls, allowed, n_docs: int) -> "AllowedDocs":
        """``allowed`` as an `AllowedDocs` of ``n_docs`` documents (a bool mask is wrapped)."""
        out = allowed if isinstance(allowed, AllowedDocs) else cls(allowed)
        if out.n_docs != n_docs:
            raise ValueError(f"allowed: mask of {out.n_docs} documents for an index of {n_docs}")
        return out
