"""The synthetic SPLADE-like generator: deterministic, canonical, calibrated, fast enough."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.testing import synthetic


@pytest.fixture(scope="module")
def small():
    return synthetic.generate(18072, 300, seed=1)   # the size of the real union it is fitted on


def test_deterministic_and_seeded():
    a = synthetic.generate(800, 20, seed=3)
    b = synthetic.generate(800, 20, seed=3)
    c = synthetic.generate(800, 20, seed=4)
    for x, y in zip(a, b):
        assert (x != y).nnz == 0
    assert (a[0] != c[0]).nnz > 0


def test_canonical_csr(small):
    docs, queries = small
    for m, rows in ((docs, 18072), (queries, 300)):
        assert m.shape == (rows, 30522) and m.dtype == np.float32
        assert m.indices.dtype == np.int32 and m.has_canonical_format
        assert np.isfinite(m.data).all() and (m.data > 0).all()
        assert np.diff(m.indptr).min() >= 1


def test_vocab_size_and_empty():
    docs, queries = synthetic.generate(50, 5, seed=0, vocab_size=1000)
    assert docs.shape == (50, 1000) and queries.shape == (5, 1000)
    assert docs.indices.max() < 1000
    docs, queries = synthetic.generate(0, 0, seed=0)
    assert docs.shape == (0, 30522) and queries.shape == (0, 30522)
    with pytest.raises(ValueError):
        synthetic.generate(-1, 1, seed=0)


def test_statistics_near_the_calibration_targets(small):
    stats = synthetic.describe(*small)
    targets = synthetic.CALIBRATION_TARGETS
    for key in ("doc_nnz_mean", "query_nnz_mean", "df_rank_1", "df_rank_10", "df_rank_100",
                "df_rank_1000", "overlap_top1", "overlap_top10", "overlap_random"):
        assert abs(stats[key] - targets[key]) <= 0.2 * targets[key], (key, stats[key])
    # queries find documents sharing their terms far more than chance
    assert stats["overlap_top1"] > 1.8 * stats["overlap_random"]


@pytest.mark.slow
def test_one_million_documents_are_generated():
    """Generation at benchmark scale works (its speed is the benchmark's to report, not a test's)."""
    docs, queries = synthetic.generate(1_000_000, 1000, seed=0)
    assert docs.shape[0] == 1_000_000 and queries.shape[0] == 1000
    assert docs.has_canonical_format and (docs.data > 0).all()


def test_topic_weight_levels_make_a_topic_weight_a_term_alike():
    """``topic_weight_corr`` correlates a topic term's weights across its topic while leaving
    the pooled weight distribution as it was."""
    # one topic and (nearly) only topical draws: one level per term
    one_topic = dict(docs_per_topic=3000, doc_topic_share=0.99)
    plain, _ = synthetic.generate(3000, 5, seed=2, params=synthetic.SyntheticParams(
        **one_topic, topic_weight_corr=0.0))
    levels, _ = synthetic.generate(3000, 5, seed=2, params=synthetic.SyntheticParams(
        **one_topic, topic_weight_corr=0.95))

    def within_term_variance(m):
        m = m.tocsc()
        df = np.diff(m.indptr)
        common = np.flatnonzero(df >= 50)
        return np.mean([m.data[m.indptr[t]:m.indptr[t + 1]].var() for t in common]) / m.data.var()

    assert within_term_variance(levels) < 0.5 * within_term_variance(plain)
    # the copula keeps each weight's marginal distribution: pooled over many topics' levels,
    # the weight quantiles are those of independent draws
    many, _ = synthetic.generate(10000, 5, seed=2, params=synthetic.SyntheticParams(
        topic_weight_corr=0.0))
    many_levels, _ = synthetic.generate(10000, 5, seed=2, params=synthetic.SyntheticParams(
        topic_weight_corr=0.95))
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(many_levels.data, q) / np.quantile(many.data, q) - 1) < 0.05, q
    again, _ = synthetic.generate(3000, 5, seed=2, params=synthetic.SyntheticParams(
        **one_topic, topic_weight_corr=0.95))
    assert (again != levels).nnz == 0


def test_topic_windows_grade_a_topic():
    """With ``topic_window`` a vector draws most of its topical terms near its own centre in
    the topic: a query's best document shares more of its terms than without, and its scores
    fall off from the best document instead of staying flat across the topic."""
    def stats(window):
        params = dataclasses.replace(synthetic.SyntheticParams(), topic_window=window)
        return synthetic.describe(*synthetic.generate(3000, 100, seed=5, params=params))

    flat, graded = stats(0.0), stats(0.7)
    assert graded["overlap_top1"] > flat["overlap_top1"] + 0.02
    assert graded["score10_over_score1"] < flat["score10_over_score1"] - 0.1


def test_params_from_json_overrides_named_fields_only():
    params = synthetic.params_from_json('{"topic_terms": 300, "doc_nnz_log": [4.0, 1.0]}')
    assert params.topic_terms == 300 and params.doc_nnz_log == (4.0, 1.0)
    assert params.topic_window == synthetic.SyntheticParams().topic_window
    assert synthetic.params_from_json("{}") == synthetic.SyntheticParams()
    with pytest.raises(ValueError, match="unknown field.*topic_termz"):
        synthetic.params_from_json('{"topic_termz": 300}')
    with pytest.raises(ValueError, match="JSON object"):
        synthetic.params_from_json("[1]")


def test_a_corpus_drawn_in_chunks_is_one_corpus():
    """`SyntheticCorpus` draws one model in chunks: every chunk shares the first's term map and
    topics, and the queries drawn after them find documents of their topics in any chunk.
    Chunks drawn from independent seeds (what the scale harness did before) would not: each
    seed permutes the vocabulary anew, so their most frequent terms would barely overlap."""
    corpus = synthetic.SyntheticCorpus(4000, 40, seed=5)
    chunks = list(corpus.documents(1000))
    assert [c.shape[0] for c in chunks] == [1000] * 4
    assert all(c.has_canonical_format and c.shape[1] == 30522 for c in chunks)

    def top_terms(m, n=100):
        return set(np.argsort(-np.bincount(m.indices, minlength=m.shape[1]))[:n].tolist())

    shared = len(top_terms(chunks[0]) & top_terms(chunks[3]))
    independent = len(top_terms(chunks[0])
                      & top_terms(synthetic.generate(1000, 0, seed=6)[0]))
    assert shared >= 70 and independent <= 20, (shared, independent)
    # the queries come after the documents and match them like `generate`'s do: a query's
    # best document, in the last chunk as in the whole corpus, shares a large part of its
    # terms (an unrelated seed's queries share almost none with any document)
    with pytest.raises(RuntimeError):
        list(corpus.documents(1000))
    queries = corpus.queries()
    for docs in (sp.vstack(chunks).tocsr(), chunks[3]):
        stats = synthetic.describe(docs, queries)
        assert stats["overlap_top1"] > max(0.3, 1.8 * stats["overlap_random"]), stats
    with pytest.raises(RuntimeError):
        corpus.queries()
    other = synthetic.describe(chunks[3], synthetic.generate(0, 40, seed=6)[1])
    assert other["overlap_top1"] < 0.1, other    # measured 0.44-0.53 above, 0.04 here
    with pytest.raises(RuntimeError):
        synthetic.SyntheticCorpus(10, 1, seed=0).queries()
