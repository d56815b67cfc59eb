"""Serving an index built with an inference-free model (issue 13), over real HTTP on Ray Serve.

The model is what `jobs/make_inference_free.py` writes: splade-tiny as the document model, and
an OpenSearch-style ``idf.json`` (BM25 IDF over the indexed documents) as the query encoder.
The index (first N_DOCS scifact documents, 2 blocked shards) records that model; the embedded
endpoint must encode queries with the static weights inside its ingress, with no network.

Expected answers are computed here from the documented expression, independently of our code:
the query tokenized without special tokens, a binary presence vector (a repeated token counts
once) times the token's weight from ``idf.json``; exact scores are the dot products with the
stored document vectors (scipy). Blocked (approximate) answers are checked against in-process
search of the same index.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import tiny_encoder
from serve_fixtures import ConcurrentLoad, serve_http_port

N_DOCS = 300
N_SHARDS = 2
QUERY_MAX_LENGTH = 64


@pytest.fixture(scope="module")
def inference_free_index(scifact_dir, tmp_path_factory):
    """(index root, model folder, document vectors, doc ids, query texts)."""
    from pipeline.data.records import parse_record
    from pipeline.encode import SpladeEncoder
    from pipeline.encode.inference_free import write_inference_free_model
    from pipeline.testing.direct_writer import write_generation

    work = tmp_path_factory.mktemp("serve-if")
    docs = []
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(N_DOCS)):
            docs.append(parse_record(json.loads(line)))
    texts = [t for _, t in docs]
    model = work / "splade-tiny-idf"
    write_inference_free_model("splade-tiny", texts, str(model), layout="idf-json")
    encoder = SpladeEncoder(str(model), device="cpu", max_length=256, query_max_length=QUERY_MAX_LENGTH)
    assert encoder.settings()["query_encoder"]["type"] == "inference-free"
    # The document route is splade-tiny itself: its vectors are the reference encoder's.
    vectors = tiny_encoder().encode(texts)
    root = work / "index"
    write_generation(str(root), 1, [i for i, _ in docs], vectors, N_SHARDS, encoder.settings(),
                     index_params={"n_postings": 200, "centroid_fraction": 0.2})
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line, _ in zip(f, range(24))]
    return str(root), model, vectors, [i for i, _ in docs], queries


def presence_times_idf(model: Path, queries: list[str]) -> sp.csr_matrix:
    """The documented inference-free query expression, from idf.json and the tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    with open(model / "idf.json", encoding="utf-8") as f:
        table = json.load(f)
    rows = np.zeros((len(queries), len(tokenizer)), dtype=np.float32)
    for r, query in enumerate(queries):
        ids = tokenizer(query, add_special_tokens=False, truncation=True,
                        max_length=QUERY_MAX_LENGTH)["input_ids"]
        for token in set(tokenizer.convert_ids_to_tokens(ids)):
            rows[r, tokenizer.convert_tokens_to_ids(token)] = table.get(token, 0.0)
    return sp.csr_matrix(rows)


@pytest.fixture(scope="module")
def endpoint(inference_free_index, ray_local):
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    root = inference_free_index[0]
    config = ServeConfig(index=root, app_name="lsrif", route_prefix="/if", topology="embedded",
                         poll_s=0, timeout_s=10.0, server_id="test-inference-free")
    port = serve_http_port()
    run_endpoint(config)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/if", timeout=60.0)
    yield client
    client.close()
    stop_endpoint(config.app_name)


def test_served_inference_free_index_under_concurrent_load(endpoint, inference_free_index):
    from pipeline.search import ShardedIndex

    root, model, vectors, doc_ids, queries = inference_free_index
    scores = (presence_times_idf(model, queries) @ vectors.T).toarray()
    exact = {}
    for q, row in zip(queries, scores):
        best = [i for i in np.argsort(-row, kind="stable")[:10] if row[i] > 0]
        exact[q] = ([doc_ids[i] for i in best], row[best])
    in_process = ShardedIndex.open(root)
    blocked = {q: ([h.doc_id for h in hits], [h.score for h in hits])
               for q, hits in zip(queries, in_process.search(queries, k=10))}

    def check_against(expected):
        def check(answer: dict) -> str | None:
            result = answer["results"][0]
            ids, want = expected
            # Ties at the 10th place may order differently; compare scores, then the ids above ties.
            if len(result["scores"]) != len(want) or not np.allclose(result["scores"], want, rtol=1e-5,
                                                                     atol=1e-5):
                return f"scores {result['scores']} != {list(want)}"
            distinct = [j for j in range(len(ids)) if list(want).count(want[j]) == 1]
            if [result["doc_ids"][j] for j in distinct] != [ids[j] for j in distinct]:
                return f"ids {result['doc_ids']} != {ids}"
            return None
        return check

    def make(client_no: int, i: int):
        q = queries[(i + client_no) % len(queries)]
        use_exact = i % 2 == 0
        body = {"queries": [q], "k": 10, "exact": use_exact}
        return body, check_against(exact[q] if use_exact else blocked[q])

    stats = endpoint.get("/stats").json()
    assert stats["topology"] == "embedded"
    with ConcurrentLoad(str(endpoint.base_url), make, clients=8, max_requests=160,
                        generations={1}) as load:
        pass
    load.assert_clean(min_answered=160)


# ------------------------------------------------------------------ a 131,072-term vocabulary, served

BIG_VOCAB = 131_072


@pytest.fixture(scope="module")
def big_vocab_index(tmp_path_factory):
    """A random masked-LM with a 131,072-row projection (splade-tiny's tokenizer), its vectors
    of 200 short texts in a 2-shard blocked index (float32 forward values, 4-byte summary terms)."""
    from test_large_vocab import random_big_vocab_model

    from pipeline.encode import SpladeEncoder
    from pipeline.testing.direct_writer import write_generation

    work = tmp_path_factory.mktemp("serve-128k")
    # ~0.1% of the terms positive per token: queries keep under the endpoint's query_cut limit
    folder = random_big_vocab_model(work / "big-vocab", seed=11, bias_mean=-1.5, vocab=BIG_VOCAB)
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=32, query_max_length=16)
    texts = [f"document {i} about heart disease, vitamin {i % 7} and bone {i % 5}" for i in range(200)]
    docs = encoder.encode(texts)
    assert docs.shape[1] == BIG_VOCAB and (docs.indices >= 65_536).any()
    root = work / "index"
    doc_ids = [f"d{i}" for i in range(len(texts))]
    # No static pruning (n_postings above the shard size): with every list whole, approximate
    # search over every query term is exact, so it can be checked against the HF expression.
    # (Derived pruning keeps every document reachable, but pruned lists are not exact.)
    write_generation(str(root), 1, doc_ids, docs, N_SHARDS, encoder.settings(),
                     index_params={"forward_values": "float32", "n_postings": 1000})
    return str(root), folder, docs, doc_ids


def splade_queries_expected(folder: Path, queries: list[str], max_length: int) -> sp.csr_matrix:
    """naver/splade's query expression on the full Hugging Face logits (float64):
    max over the query's tokens of log1p(relu(logits))."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for q in queries:
            batch = tok([q], truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(torch.log1p(torch.relu(model(**batch).logits.double())).amax(dim=1)[0].numpy())
    return sp.csr_matrix(np.asarray(rows))


def test_served_128k_vocabulary_index_equals_the_expression(big_vocab_index, ray_local):
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    root, folder, docs, doc_ids = big_vocab_index
    queries = ["heart disease", "vitamin 3 bone", "document 12", "bone 4 about vitamin 6"]
    q = splade_queries_expected(folder, queries, max_length=16)
    assert (q.indices >= 65_536).any()
    # Approximate search visits every query term (the endpoint's query_cut limit is 4096).
    assert np.diff(q.indptr).max() <= 4096
    scores = (q @ docs.T.astype(np.float64)).toarray()
    config = ServeConfig(index=root, app_name="lsrbig", route_prefix="/big", topology="embedded",
                         poll_s=0, timeout_s=10.0, server_id="test-128k")
    port = serve_http_port()
    run_endpoint(config)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/big", timeout=60.0) as client:
            for params in ({"exact": True}, {"exact": False, "query_cut": 4096, "heap_factor": 1e-6}):
                r = client.post("/search", json={"queries": queries, "k": 10, **params})
                assert r.status_code == 200, r.text
                for row, got in zip(scores, r.json()["results"], strict=True):
                    best = np.lexsort((np.arange(row.size), -row))[:10]
                    np.testing.assert_allclose(got["scores"], row[best], rtol=1e-4, atol=1e-4)
                    distinct = [j for j in range(10) if np.sum(np.isclose(row[best], row[best][j],
                                                                          rtol=1e-5)) == 1]
                    assert [got["doc_ids"][j] for j in distinct] == [doc_ids[best[j]] for j in distinct]
    finally:
        stop_endpoint(config.app_name)
