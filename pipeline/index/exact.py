"""Exact top-k retrieval by sparse dot product: the ground truth, and an index for small shards.

Term-at-a-time over an inverted (term-major) copy of the documents: for each query term in
ascending term order, every posting adds ``q_t * d_t`` to a float32 accumulator. That is the
summation order and precision of ``scipy.sparse`` (``queries @ docs.T``), so scores match
scipy bit for bit.
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from pipeline.index.allowed import AllowedDocs
from pipeline.index.fastcall import FastCall, numba_threads
from pipeline.index.topk import empty_results, heap_push, heap_to_row
from pipeline.index.validate import as_csr, check_k, check_queries, check_threads


@njit(cache=True, nogil=True)
def _exact_query(q_terms, q_values, term_ptr, term_docs, term_values,
                 acc, seen, touched, h_scores, h_docs, out_docs, out_scores, allowed):
    # ``allowed``: empty (no filter) or a bool mask; a disallowed document is never
    # accumulated. Two copies of the loop so the unfiltered one does no extra work.
    n_touched = 0
    if allowed.size == 0:
        for i in range(q_terms.size):
            t = q_terms[i]
            w = q_values[i]
            for p in range(term_ptr[t], term_ptr[t + 1]):
                d = term_docs[p]
                if not seen[d]:
                    seen[d] = True
                    touched[n_touched] = d
                    n_touched += 1
                acc[d] += w * term_values[p]
    else:
        for i in range(q_terms.size):
            t = q_terms[i]
            w = q_values[i]
            for p in range(term_ptr[t], term_ptr[t + 1]):
                d = term_docs[p]
                if not allowed[d]:
                    continue
                if not seen[d]:
                    seen[d] = True
                    touched[n_touched] = d
                    n_touched += 1
                acc[d] += w * term_values[p]
    capacity = h_scores.size
    size = 0
    for j in range(n_touched):
        d = touched[j]
        s = acc[d]
        if s > 0:
            size = heap_push(h_scores, h_docs, size, capacity, s, np.int64(d))
        acc[d] = 0
        seen[d] = False
    heap_to_row(h_scores, h_docs, size, out_docs, out_scores)


@njit(cache=True, nogil=True)
def _exact_serial(q_indptr, q_indices, q_data, term_ptr, term_docs, term_values,
                  acc, seen, touched, h_scores, h_docs, out_docs, out_scores, allowed):
    for qi in range(q_indptr.size - 1):
        a, b = q_indptr[qi], q_indptr[qi + 1]
        _exact_query(q_indices[a:b], q_data[a:b], term_ptr, term_docs, term_values,
                     acc, seen, touched, h_scores, h_docs, out_docs[qi], out_scores[qi],
                     allowed)


@njit(cache=True, nogil=True, parallel=True)
def _exact_parallel(q_indptr, q_indices, q_data, term_ptr, term_docs, term_values,
                    n_docs, capacity, n_chunks, out_docs, out_scores, allowed):
    nq = q_indptr.size - 1
    for c in prange(n_chunks):
        acc = np.zeros(n_docs, np.float32)
        seen = np.zeros(n_docs, np.bool_)
        touched = np.empty(n_docs, np.int32)
        h_scores = np.empty(capacity, np.float32)
        h_docs = np.empty(capacity, np.int64)
        lo, hi = c * nq // n_chunks, (c + 1) * nq // n_chunks
        _exact_serial(q_indptr[lo:hi + 1], q_indices, q_data, term_ptr, term_docs, term_values,
                      acc, seen, touched, h_scores, h_docs, out_docs[lo:hi], out_scores[lo:hi],
                      allowed)


_NO_FILTER = np.zeros(0, np.bool_)   # the kernels' "allowed" mask when nothing is filtered


class ExactIndex:
    """Exact sparse dot-product top-k over a document matrix.

    ``docs``: anything scipy can turn into a (n_docs, vocab_size) matrix; coerced to
    float32 CSR; NaN/inf/negative weights rejected with ValueError. Zero documents is
    allowed: every search then returns padding.

    Results of `search`: ``(doc_idx int64 (nq, k), scores float32 (nq, k))``, each row sorted
    by score descending, ties by lower document index (corpus order). Only documents with a
    positive score are returned; the remaining slots hold doc -1 and score 0.0. ``k`` may
    exceed ``n_docs``; a query with no terms returns only padding.
    """

    FORMAT = "lsr-pipeline/exact-index"
    FORMAT_VERSION = 1

    def __init__(self, docs) -> None:
        csr = as_csr(docs, "docs")
        self._docs = csr
        csc = csr.tocsc()
        csc.sort_indices()
        self._term_ptr = csc.indptr.astype(np.int64)
        self._term_docs = csc.indices.astype(np.int32)
        self._term_values = csc.data.astype(np.float32)
        self._local = threading.local()
        self._serial = FastCall(_exact_serial)

    # -- properties --------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return self._docs.shape[0]

    @property
    def vocab_size(self) -> int:
        return self._docs.shape[1]

    @property
    def docs(self) -> sp.csr_matrix:
        """The indexed documents (canonical float32 CSR); do not modify."""
        return self._docs

    def document(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Document ``d``: (int32 terms ascending, float32 weights)."""
        if not 0 <= d < self.n_docs:
            raise IndexError(f"document {d} outside 0..{self.n_docs - 1}")
        a, b = self._docs.indptr[d], self._docs.indptr[d + 1]
        return self._docs.indices[a:b].astype(np.int32), self._docs.data[a:b]

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored form: the documents' CSR (int64 pointers, int32 terms, float32 values)."""
        d = self._docs
        return {"indptr": d.indptr.astype(np.int64), "indices": d.indices.astype(np.int32),
                "data": d.data.astype(np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_docs: int, vocab_size: int
                    ) -> "ExactIndex":
        """Rebuild from `arrays()`; raises ``ValueError`` on term ids outside the vocabulary."""
        indices = arrays["indices"]
        if indices.size and (indices.min() < 0 or indices.max() >= vocab_size):
            raise ValueError("term ids outside the vocabulary")
        return cls(sp.csr_matrix((arrays["data"], indices, arrays["indptr"]),
                                 shape=(n_docs, vocab_size)))

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (the CSR and its inverted copy)."""
        d = self._docs
        return int(d.data.nbytes + d.indices.nbytes + d.indptr.nbytes + self._term_ptr.nbytes
                   + self._term_docs.nbytes + self._term_values.nbytes)

    # -- search ------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, threads: int | None = None, allowed=None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k for each query row; see the class docstring for the result convention.

        ``threads``: None uses every core numba may use; one query, or ``threads=1``, runs
        on the calling thread without the thread pool. ``allowed``: a filter's allowed
        documents (bool mask of ``n_docs`` or `AllowedDocs`); no other document is scored.
        """
        k = check_k(k)
        threads = check_threads(threads)
        q = check_queries(queries, self.vocab_size)
        allowed = None if allowed is None else AllowedDocs.of(allowed, self.n_docs)
        mask = _NO_FILTER if allowed is None else allowed.mask
        q_indptr = q.indptr.astype(np.int64, copy=False)
        nq = q.shape[0]
        out_docs, out_scores = empty_results(nq, k)
        if nq == 0 or self.n_docs == 0 or q.nnz == 0 or (allowed is not None
                                                         and allowed.count == 0):
            return out_docs, out_scores
        capacity = min(k, self.n_docs if allowed is None else allowed.count)
        if nq == 1 or threads == 1:
            acc, seen, touched = self._scratch()
            h_scores = np.empty(capacity, np.float32)
            h_docs = np.empty(capacity, np.int64)
            self._serial("serial", q_indptr, q.indices, q.data, self._term_ptr, self._term_docs,
                          self._term_values, acc, seen, touched, h_scores, h_docs,
                          out_docs, out_scores, mask)
        else:
            n_chunks = min(nq, 4 * threads)
            with numba_threads(threads):
                _exact_parallel(q_indptr, q.indices, q.data, self._term_ptr, self._term_docs,
                                self._term_values, self.n_docs, capacity, n_chunks,
                                out_docs, out_scores, mask)
        return out_docs, out_scores

    def _scratch(self):
        """Per-thread accumulator arrays, allocated once and left clean by every query."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            n = self.n_docs
            scratch = (np.zeros(n, np.float32), np.zeros(n, np.bool_), np.empty(n, np.int32))
            self._local.scratch = scratch
        return scratch

    def __repr__(self) -> str:
        return (f"ExactIndex(n_docs={self.n_docs}, vocab_size={self.vocab_size}, "
                f"nnz={self._docs.nnz})")
