"""Bounded top-k selection in numba, shared by both indexes.

Order: higher score first; equal scores by lower document index (corpus order). The heap
keeps the k best (score, doc) pairs with the *worst* at its root, so one comparison against
the root decides whether a candidate enters.

Result rows: ``k`` slots sorted best first; slots beyond the documents found hold doc
index -1 and score 0.0 (JSON-safe padding, never -inf).
"""

from __future__ import annotations

import numpy as np
from numba import njit

PAD_DOC = -1
PAD_SCORE = 0.0


@njit(inline="always")
def worse(s1, d1, s2, d2) -> bool:
    """(s1, d1) ranks below (s2, d2)."""
    return s1 < s2 or (s1 == s2 and d1 > d2)


@njit(cache=True, nogil=True)
def heap_push(h_scores, h_docs, size, capacity, score, doc):
    """Offer (score, doc) to the heap; returns the new size."""
    if size < capacity:
        i = size
        while i > 0:
            parent = (i - 1) >> 1
            if worse(score, doc, h_scores[parent], h_docs[parent]):
                h_scores[i] = h_scores[parent]
                h_docs[i] = h_docs[parent]
                i = parent
            else:
                break
        h_scores[i] = score
        h_docs[i] = doc
        return size + 1
    if not worse(h_scores[0], h_docs[0], score, doc):
        return size
    _sift_down(h_scores, h_docs, size, 0, score, doc)
    return size


@njit(inline="always")
def _sift_down(h_scores, h_docs, size, i, score, doc):
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        right = child + 1
        if right < size and worse(h_scores[right], h_docs[right], h_scores[child], h_docs[child]):
            child = right
        if worse(h_scores[child], h_docs[child], score, doc):
            h_scores[i] = h_scores[child]
            h_docs[i] = h_docs[child]
            i = child
        else:
            break
    h_scores[i] = score
    h_docs[i] = doc


@njit(cache=True, nogil=True)
def heap_to_row(h_scores, h_docs, size, out_docs, out_scores):
    """Drain the heap into a result row, best first, padding the tail; empties the heap."""
    for j in range(size, out_docs.size):
        out_docs[j] = PAD_DOC
        out_scores[j] = PAD_SCORE
    n = size
    while n > 0:
        out_docs[n - 1] = h_docs[0]
        out_scores[n - 1] = h_scores[0]
        n -= 1
        if n > 0:
            _sift_down(h_scores, h_docs, n, 0, h_scores[n], h_docs[n])


def empty_results(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded result arrays: doc -1, score 0.0."""
    return (np.full((n_queries, k), PAD_DOC, dtype=np.int64),
            np.zeros((n_queries, k), dtype=np.float32))


def recall_at_k(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |got ∩ truth| / |truth|, on result rows (padding ignored).

    The measure of an approximate index against exact search. Queries whose exact result is
    empty are left out; with none left, recall is 1.0 (nothing could be missed).
    """
    per_query = []
    for g, t in zip(got, truth):
        t = set(t[t != PAD_DOC].tolist())
        if t:
            per_query.append(len(t & set(g[g != PAD_DOC].tolist())) / len(t))
    return float(np.mean(per_query)) if per_query else 1.0
