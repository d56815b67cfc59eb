"""Vocabularies above 65,536 terms end to end: encode, postings, BlockedIndex build (summary
terms past 16 bits), search, save, load (check_structure runs on every load).

Differential: every search is compared with `ExactIndex` on the same vectors, and with a plain
dense dot product written here. Term ids above 65,535 are present in documents and queries,
so a 16-bit truncation anywhere would change the results.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import assert_same_ranking
from pipeline.format import ShardPostings, fingerprint_texts, load_index, read_postings, save_index, write_postings
from pipeline.index import BlockedIndex, ExactIndex
from pipeline.objstore.fs import resolve

VOCAB = 131_072


def splade_like(n_rows: int, vocab: int, per_row: int, seed: int) -> sp.csr_matrix:
    """Sparse non-negative rows; a third of the terms drawn above 65,535 (above vocab / 2 for
    smaller vocabularies), the last term id in row 0, and a shared head of frequent terms
    (posting lists with many blocks); weights in (0, 3]."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    head = rng.choice(vocab, 64, replace=False)
    for r in range(n_rows):
        n = int(rng.integers(per_row // 2, per_row + 1))
        c = np.concatenate([rng.choice(head, n // 4, replace=False),
                            rng.integers(0, 65_536, n // 3),
                            rng.integers(min(65_536, vocab // 2), vocab, n - n // 4 - n // 3)])
        if r == 0:
            c = np.append(c, vocab - 1)
        c = np.unique(c)
        rows.append(np.full(c.size, r))
        cols.append(c)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    data = rng.uniform(0.01, 3.0, rows.size).astype(np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(n_rows, vocab), dtype=np.float32)


def dense_top_k(docs: sp.csr_matrix, queries: sp.csr_matrix, k: int):
    scores = (queries.astype(np.float64) @ docs.astype(np.float64).T).toarray()
    out = []
    for row in scores:
        order = np.lexsort((np.arange(row.size), -row))[:k]
        keep = row[order] > 0
        out.append((order[keep], row[order][keep]))
    return out


def assert_matches_exact(index, exact: ExactIndex, docs, queries, k: int = 10, **params) -> None:
    ids, scores = index.search(queries, k, **params)
    exact_ids, exact_scores = exact.search(queries, k)
    for q, (want_ids, want_scores) in enumerate(dense_top_k(docs, queries, k)):
        n = len(want_ids)
        assert_same_ranking(list(exact_ids[q][:n]), exact_scores[q][:n], list(want_ids), want_scores, tol=1e-3)
        assert_same_ranking(list(ids[q][:n]), scores[q][:n], list(exact_ids[q][:n]), exact_scores[q][:n], tol=1e-3)


@pytest.fixture(scope="module")
def collection():
    docs = splade_like(3000, VOCAB, 60, seed=1)
    queries = splade_like(40, VOCAB, 12, seed=2)
    assert docs.indices.max() >= 65_536 and queries.indices.max() >= 65_536
    return docs, queries


@pytest.fixture(scope="module")
def built(collection):
    docs, _ = collection
    return BlockedIndex.build(docs, forward_values="float32"), ExactIndex(docs)


def test_build_and_search_128k_vocabulary_matches_exact(collection, built):
    docs, queries = collection
    blocked, exact = built
    assert blocked.vocab_size == VOCAB and exact.vocab_size == VOCAB
    assert int(blocked.arrays()["group_term"].max()) >= 1 << 16   # terms past 16 bits stored
    # no skipping and every query term visited: the blocked index must return the exact ranking
    assert_matches_exact(blocked, exact, docs, queries, query_cut=64, heap_factor=0.0)
    # approximate (block skipping, every query term visited) it stays close: recall@10 against
    # exact. Not at the derived query_cut: that is calibrated on SPLADE queries, whose mass sits
    # in a few terms; these have uniform weights (the defaults' recall is tested on real
    # encodings in test_index_blocked).
    ids, _ = blocked.search(queries, 10, query_cut=16, heap_factor=0.8)
    exact_ids, _ = exact.search(queries, 10)
    recall = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum())
                      for a, b in zip(ids, exact_ids)])
    assert recall >= 0.9


def test_save_load_128k_vocabulary(collection, built, tmp_path):
    docs, queries = collection
    blocked, exact = built
    save_index(blocked, str(tmp_path / "blocked"))
    save_index(exact, str(tmp_path / "exact"))
    blocked_back, exact_back = load_index(str(tmp_path / "blocked")), load_index(str(tmp_path / "exact"))
    assert blocked_back.vocab_size == VOCAB and exact_back.vocab_size == VOCAB
    for original, back, params in ((blocked, blocked_back, {"query_cut": 64, "heap_factor": 0.0}),
                                   (exact, exact_back, {})):
        a_ids, a_scores = original.search(queries, 10, **params)
        b_ids, b_scores = back.search(queries, 10, **params)
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_array_equal(a_scores, b_scores)
    assert_matches_exact(blocked_back, exact_back, docs, queries, query_cut=64, heap_factor=0.0)


def test_float16_forward_index_refuses_large_vocabulary_clearly(collection):
    docs, _ = collection
    with pytest.raises(ValueError, match="use 'float32'"):
        BlockedIndex.build(docs[:50], forward_values="float16")


@pytest.mark.parametrize("vocab", [65_536, 65_537])
def test_boundary_vocabularies(vocab):
    docs = splade_like(400, vocab, 30, seed=vocab)
    queries = splade_like(10, vocab, 8, seed=vocab + 1)
    blocked = BlockedIndex.build(docs, forward_values="float32")
    assert_matches_exact(blocked, ExactIndex(docs), docs, queries, query_cut=64, heap_factor=0.0)


def test_postings_round_trip_keep_term_ids_above_65535(collection, tmp_path):
    docs, _ = collection
    part = docs[:200]
    postings = ShardPostings(np.array([f"d{i}" for i in range(200)], dtype=object),
                             fingerprint_texts([f"text {i}" for i in range(200)]), part)
    for dtype in ("float32", "float16"):
        loc = resolve(str(tmp_path / f"postings-{dtype}"))
        write_postings(loc, postings, values_dtype=dtype)
        back = read_postings(loc, verify=True)
        assert back.vectors.shape == (200, VOCAB)
        np.testing.assert_array_equal(back.vectors.indices, part.indices)
        np.testing.assert_allclose(back.vectors.data, part.data, rtol=1e-3 if dtype == "float16" else 0)


def random_big_vocab_model(folder, seed: int, bias_mean: float, vocab: int = VOCAB):
    """A random 1-layer BERT masked-LM with a `vocab`-row projection and splade-tiny's tokenizer,
    saved to `folder`. The projection bias ~ N(bias_mean, 0.5) sets how many terms are positive."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig

    from pipeline.encode.models import resolve_model

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, pad_token_id=0)
    model = AutoModelForMaskedLM.from_config(config)
    with torch.no_grad():
        model.get_output_embeddings().bias.normal_(bias_mean, 0.5)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("splade-tiny")).save_pretrained(folder)
    return folder


def test_encoder_with_128k_vocabulary_into_the_index(tmp_path):
    """A random masked-LM whose projection has 131,072 rows: vectors use dimensions above 65,535,
    and they index and search like any other."""
    from pipeline.encode import SpladeEncoder

    folder = random_big_vocab_model(tmp_path / "big-vocab", seed=5, bias_mean=-1.0)
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=32, query_max_length=16)
    assert encoder.settings()["vocab_size"] == VOCAB
    texts = [f"document {i} about heart disease, vitamin {i % 7} and bone {i % 5}" for i in range(60)]
    docs = encoder.encode(texts)
    queries = encoder.encode_queries(["heart disease", "vitamin 3 bone", "document 12"])
    assert docs.shape == (60, VOCAB) and (docs.indices >= 65_536).any() and (queries.indices >= 65_536).any()
    blocked = BlockedIndex.build(docs, forward_values="float32")
    save_index(blocked, str(tmp_path / "index"))
    assert_matches_exact(load_index(str(tmp_path / "index")), ExactIndex(docs), docs, queries,
                         query_cut=10_000, heap_factor=0.0)


def test_sharded_128k_index_committed_and_searched(collection, tmp_path):
    """The committed-index path (shards written with the job's shard writer, opened by ShardedIndex,
    as search and serve do) with a 131,072-term vocabulary."""
    from pipeline.search import ShardedIndex
    from pipeline.testing.direct_writer import write_generation

    docs, queries = collection
    doc_ids = [f"d{i}" for i in range(docs.shape[0])]
    settings = {"model": "synthetic", "vocab_size": VOCAB}
    write_generation(str(tmp_path / "blocked"), 1, doc_ids, docs, 3, settings,
                     index_params={"forward_values": "float32"})
    opened = ShardedIndex.open(str(tmp_path / "blocked"))
    exact_ids, exact_scores = ExactIndex(docs).search(queries, 10)
    for exact, params in ((True, {}), (False, {"query_cut": 64, "heap_factor": 0.0})):
        hits = opened.search_vectors(queries, k=10, exact=exact, **params)
        for q, row in enumerate(hits):
            n = int((exact_ids[q] >= 0).sum())
            assert_same_ranking([h.doc_id for h in row][:n], [h.score for h in row][:n],
                                [doc_ids[i] for i in exact_ids[q][:n]], exact_scores[q][:n], tol=1e-3)
