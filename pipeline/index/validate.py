"""Input checks shared by both indexes: every bad input becomes a clear ValueError here,
before any array reaches a numba kernel."""

from __future__ import annotations

import numbers
import os

import numpy as np
import scipy.sparse as sp


def as_csr(matrix, name: str) -> sp.csr_matrix:
    """Coerce anything scipy can convert into a canonical float32 CSR matrix.

    Canonical: float32 values (numba has no float16), int32 column ids sorted within each
    row, no duplicates (summed), no explicit zeros, C-contiguous arrays (the kernels are
    called with fixed argument types, see `fastcall`). Rejects NaN, inf
    and negative weights: learned sparse weights are ``log1p(relu(.))``, never negative,
    and a negative weight would break the score bounds the blocked index relies on.
    """
    if matrix is None:
        raise ValueError(f"{name}: expected a sparse matrix, got None")
    if (type(matrix) is sp.csr_matrix and matrix.dtype == np.float32
            and matrix.indices.dtype == np.int32 and matrix.has_canonical_format):
        data = matrix.data   # the common case, e.g. one query per request: check, no copy
        if data.size and not (np.isfinite(data).all() and (data > 0).all()):
            return as_csr(sp.csr_matrix(matrix, copy=True), name)   # the slow path explains
        if data.flags.c_contiguous and matrix.indices.flags.c_contiguous:
            return matrix
    try:
        if sp.issparse(matrix):
            csr = sp.csr_matrix(matrix)
        else:
            arr = np.asarray(matrix)
            if arr.dtype == object:
                raise TypeError("object array")
            if arr.ndim == 1:
                arr = arr[None, :]
            if arr.ndim != 2:
                raise TypeError(f"{arr.ndim}-dimensional array")
            if arr.dtype == np.float16:   # scipy.sparse has no float16
                arr = arr.astype(np.float32)
            csr = sp.csr_matrix(arr)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be read as a 2-D sparse matrix ({exc})") from exc
    if not (np.issubdtype(csr.dtype, np.floating) or np.issubdtype(csr.dtype, np.integer)
            or csr.dtype == np.bool_):
        raise ValueError(f"{name}: values must be real numbers, got dtype {csr.dtype}")
    # never mutate the caller's arrays (scipy may hand back views of them)
    shared = sp.issparse(matrix) and any(
        np.may_share_memory(mine, theirs) for mine in (csr.data, csr.indices, csr.indptr)
        for theirs in (getattr(matrix, "data", None), getattr(matrix, "indices", None),
                       getattr(matrix, "indptr", None), getattr(matrix, "row", None),
                       getattr(matrix, "col", None)) if isinstance(theirs, np.ndarray))
    data = csr.data
    if data.size and not np.isfinite(data).all():
        bad = int(np.flatnonzero(~np.isfinite(data))[0])
        raise ValueError(f"{name}: row {_row_of(csr, bad)} holds a NaN or infinite weight")
    if data.size and (data < 0).any():
        bad = int(np.flatnonzero(data < 0)[0])
        raise ValueError(f"{name}: row {_row_of(csr, bad)} holds a negative weight "
                         f"({data[bad]!r}); sparse retrieval weights must be >= 0")
    if csr.dtype != np.float32:
        with np.errstate(over="ignore"):
            values32 = data.astype(np.float32)
        if values32.size and not np.isfinite(values32).all():
            raise ValueError(f"{name}: a weight overflows float32")
        csr = sp.csr_matrix((values32, csr.indices.copy(), csr.indptr.copy()), shape=csr.shape)
        shared = False
    if not csr.has_canonical_format or (csr.data == 0).any():
        if shared:
            csr = csr.copy()
        csr.sum_duplicates()   # also sorts the column ids
        csr.eliminate_zeros()
    if csr.indices.dtype != np.int32 or not csr.indices.flags.c_contiguous:
        csr.indices = np.ascontiguousarray(csr.indices, dtype=np.int32)
    if not csr.data.flags.c_contiguous:
        csr.data = np.ascontiguousarray(csr.data)
    return csr


def _row_of(csr: sp.csr_matrix, position: int) -> int:
    return int(np.searchsorted(csr.indptr, position, side="right") - 1)


def check_queries(queries, vocab_size: int) -> sp.csr_matrix:
    """Canonical CSR queries whose term ids all fall inside the index vocabulary."""
    q = as_csr(queries, "queries")
    if q.shape[1] > vocab_size:
        used = q.indices.max(initial=-1) if q.nnz else -1
        raise ValueError(
            f"queries: {q.shape[1]} columns but the index vocabulary has {vocab_size} terms "
            f"(largest term id used: {used}); queries must be encoded with the same vocabulary")
    return q


def check_k(k) -> int:
    if type(k) is int and k > 0:   # fast path: this runs on every query
        return k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def check_threads(threads) -> int:
    """None -> every core numba may use; else an integer >= 1 (capped at numba's pool)."""
    import numba

    if threads is None:
        return numba.config.NUMBA_NUM_THREADS
    if type(threads) is int and 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        return threads
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(min(threads, numba.config.NUMBA_NUM_THREADS, os.cpu_count() or 1))


def check_int(value, name: str, minimum: int = 1) -> int:
    if type(value) is int and value >= minimum:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(value, name: str, low: float, high: float, *, low_open: bool = False) -> float:
    if type(value) is float and (value > low if low_open else value >= low) and value <= high:
        return value   # fast path (NaN fails the comparisons)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok = (v > low if low_open else v >= low) and v <= high
    if not ok or not np.isfinite(v):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return v
