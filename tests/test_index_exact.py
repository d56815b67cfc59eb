"""ExactIndex: equal to the scipy sparse product (ids, scores, tie order) on real encodings,
result conventions, and every bad input named in a ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.index import ExactIndex


def scipy_topk(docs: sp.csr_matrix, queries: sp.csr_matrix, k: int):
    """Reference: scipy product, positive scores only, score desc then doc asc, padded."""
    scores = (queries @ docs.T).toarray().astype(np.float32)
    out_d = np.full((queries.shape[0], k), -1, np.int64)
    out_s = np.zeros((queries.shape[0], k), np.float32)
    for i, row in enumerate(scores):
        nz = np.flatnonzero(row > 0)
        order = nz[np.lexsort((nz, -row[nz]))][:k]
        out_d[i, :order.size] = order
        out_s[i, :order.size] = row[order]
    return out_d, out_s


@pytest.fixture(scope="module")
def cisi(encodings):
    return encodings("cisi")


@pytest.fixture(scope="module")
def cisi_exact(cisi):
    return ExactIndex(cisi.docs)


@pytest.mark.parametrize("threads", [1, None])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_equals_scipy_on_cisi(cisi, cisi_exact, threads, k):
    got_d, got_s = cisi_exact.search(cisi.queries, k=k, threads=threads)
    ref_d, ref_s = scipy_topk(cisi.docs, cisi.queries, k)
    assert got_d.dtype == np.int64 and got_s.dtype == np.float32
    assert got_d.shape == (cisi.queries.shape[0], k)
    np.testing.assert_array_equal(got_d, ref_d)
    np.testing.assert_array_equal(got_s, ref_s)   # bit-identical, same summation order


def test_single_query_path_equals_batch(cisi, cisi_exact):
    batch_d, batch_s = cisi_exact.search(cisi.queries, k=10)
    for i in range(0, cisi.queries.shape[0], 17):
        d, s = cisi_exact.search(cisi.queries[i], k=10)
        np.testing.assert_array_equal(d[0], batch_d[i])
        np.testing.assert_array_equal(s[0], batch_s[i])


def test_ties_break_by_lower_doc_index():
    # docs 1, 2, 4 score 2.0; doc 3 scores 3.0; doc 0 scores 0
    docs = sp.csr_matrix(np.array([[0, 0, 1], [2, 0, 0], [2, 0, 0], [3, 0, 0], [1, 1, 0]],
                                  np.float32))
    d, s = ExactIndex(docs).search(sp.csr_matrix(np.array([[1, 1, 0]], np.float32)), k=4)
    assert d.tolist() == [[3, 1, 2, 4]]
    assert s.tolist() == [[3.0, 2.0, 2.0, 2.0]]


def test_padding_zero_scores_never_returned_and_k_above_n_docs():
    docs = sp.csr_matrix(np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3]], np.float32))
    d, s = ExactIndex(docs).search(np.array([[0, 1, 0]], np.float32), k=5)
    assert d.tolist() == [[1, -1, -1, -1, -1]]
    assert s.tolist() == [[2.0, 0.0, 0.0, 0.0, 0.0]]


def test_empty_queries_empty_index_and_no_queries():
    docs = sp.csr_matrix(np.array([[1, 0], [0, 1]], np.float32))
    index = ExactIndex(docs)
    d, s = index.search(sp.csr_matrix((2, 2), dtype=np.float32), k=3)
    assert (d == -1).all() and (s == 0).all() and d.shape == (2, 3)
    d, s = index.search(sp.csr_matrix((0, 2), dtype=np.float32), k=3)
    assert d.shape == (0, 3) and s.shape == (0, 3)
    empty = ExactIndex(sp.csr_matrix((0, 2), dtype=np.float32))
    assert empty.n_docs == 0 and empty.vocab_size == 2
    d, s = empty.search(np.array([[1.0, 1.0]]), k=2)
    assert d.tolist() == [[-1, -1]] and s.tolist() == [[0.0, 0.0]]


def test_accepts_anything_scipy_converts_and_coerces_dtype():
    dense = np.array([[1.0, 0, 3.0], [0, 2.0, 0]], np.float64)
    ref = ExactIndex(sp.csr_matrix(dense.astype(np.float32)))
    for docs in (dense, dense.astype(np.float16), sp.coo_matrix(dense), sp.csc_matrix(dense),
                 sp.csr_array(dense), dense.astype(np.int64), dense.tolist()):
        index = ExactIndex(docs)
        for q in (np.array([1.0, 1.0, 1.0]), sp.lil_matrix(np.ones((1, 3))), [[1, 1, 1]]):
            d, s = index.search(q, k=2)
            r_d, r_s = ref.search(np.ones((1, 3), np.float32), k=2)
            np.testing.assert_array_equal(d, r_d)
            np.testing.assert_allclose(s, r_s, rtol=1e-3)


def test_does_not_modify_callers_matrix():
    docs = sp.csr_matrix((np.array([1.0, 2.0, 0.0], np.float32), np.array([2, 0, 1]),
                          np.array([0, 3])), shape=(1, 3))
    before = (docs.data.copy(), docs.indices.copy())
    ExactIndex(docs)
    np.testing.assert_array_equal(docs.data, before[0])
    np.testing.assert_array_equal(docs.indices, before[1])


@pytest.mark.parametrize("bad, match", [
    (np.array([[1.0, np.nan]]), "NaN or infinite"),
    (np.array([[1.0, np.inf]]), "NaN or infinite"),
    (np.array([[1.0, -0.5]]), "negative weight"),
    (np.array([[1e39, 1.0]]), "overflows float32"),
    (np.array([["a", "b"]], dtype=object), "cannot be read"),
    (np.ones((2, 2, 2)), "cannot be read"),
    (None, "expected a sparse matrix"),
])
def test_bad_documents(bad, match):
    with pytest.raises(ValueError, match=match):
        ExactIndex(bad)


def test_bad_queries_and_arguments():
    index = ExactIndex(sp.csr_matrix(np.eye(4, dtype=np.float32)))
    with pytest.raises(ValueError, match="5 columns but the index vocabulary has 4"):
        index.search(np.ones((1, 5)), k=1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.array([[np.nan, 0, 0, 0]]), k=1)
    with pytest.raises(ValueError, match="negative"):
        index.search(np.array([[-1.0, 0, 0, 0]]), k=1)
    for k in (0, -3, 2.5, True, "10", None):
        with pytest.raises(ValueError, match="k must be"):
            index.search(np.ones((1, 4)), k=k)
    for threads in (0, -1, 1.5):
        with pytest.raises(ValueError, match="threads"):
            index.search(np.ones((1, 4)), k=1, threads=threads)


def test_numba_threads_is_scoped_and_restored():
    import numba

    from pipeline.index.fastcall import numba_threads

    before = numba.get_num_threads()
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with pytest.raises(RuntimeError), numba_threads(1):
        raise RuntimeError("the setting is restored on errors too")
    assert numba.get_num_threads() == before
    with numba_threads(10**6):   # capped at the pool's size, never an error
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


def test_recall_at_k_ignores_padding_and_empty_truth():
    from pipeline.index import recall_at_k

    truth = np.array([[3, 1, -1], [-1, -1, -1], [7, 8, 9]])
    got = np.array([[1, -1, -1], [5, 6, -1], [9, 8, 7]])
    assert recall_at_k(got, truth) == pytest.approx((0.5 + 1.0) / 2)
    assert recall_at_k(got[1:2], truth[1:2]) == 1.0
