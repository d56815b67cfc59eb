"""`POST /search` with filter, fields and explain over real HTTP (Serve on 127.0.0.1), both
topologies: answers equal the in-process `ShardedIndex` with the same request; a bad filter
is 422 with the filter's message; limits give 413."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from serve_fixtures import serve_http_port
from test_filtered_search import SCHEMA, _corpus_fields


@pytest.fixture(scope="module")
def fields_index(scifact_head, scifact_head_dir, tmp_path_factory):
    from conftest import tiny_encoder
    from pipeline.testing.direct_writer import write_generation

    enc = scifact_head
    rows = _corpus_fields(scifact_head_dir)
    root = str(tmp_path_factory.mktemp("served-fields") / "index")
    write_generation(root, 1, enc.doc_ids, enc.docs, 3, tiny_encoder().settings(),
                     fields=(SCHEMA, [{k: r[k] for k in ("first", "tlen", "long", "title")}
                                      for r in rows]))
    return root


def _queries(scifact_dir, n):
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


@pytest.mark.parametrize("topology", ["embedded", pytest.param("split", marks=pytest.mark.slow)])
def test_served_filter_fields_explain(fields_index, ray_local, scifact_dir, topology):
    from pipeline.search import ShardedIndex
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    name = f"lsrf{topology[0]}"
    config = ServeConfig(index=fields_index, app_name=name, route_prefix=f"/{name}",
                         topology=topology, encoder_placement="ingress", poll_s=0,
                         timeout_s=10.0, server_id=f"test-{name}", max_filter_nodes=8,
                         max_fields=3, max_explain_terms=16)
    port = serve_http_port()
    run_endpoint(config)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}/{name}", timeout=60.0)
        in_process = ShardedIndex.open(fields_index)
        texts = _queries(scifact_dir, 4)
        flt = {"and": [{"range": {"tlen": {"gte": 60, "lt": 140}}},
                       {"not": {"term": {"first": "t"}}}]}
        r = client.post("/search", json={"queries": texts, "k": 7, "filter": flt,
                                         "fields": ["title", "tlen"], "explain": True})
        assert r.status_code == 200, r.text
        expected = in_process.search(texts, k=7, filter=flt, fields=["title", "tlen"],
                                     explain=True, max_explain_terms=16)
        for served, hits in zip(r.json()["results"], expected, strict=True):
            assert served["doc_ids"] == [h.doc_id for h in hits]
            np.testing.assert_allclose(served["scores"], [h.score for h in hits], rtol=1e-6)
            assert served["fields"] == [h.fields for h in hits]
            for got, hit in zip(served["fields"], hits):
                assert 60 <= got["tlen"] < 140
            assert [[c["term_id"] for c in e] for e in served["explain"]] == \
                [[c["term_id"] for c in h.explain] for h in hits]
            assert all(isinstance(c["token"], str) for e in served["explain"] for c in e)
        # plain requests keep their shape
        plain = client.post("/search", json={"query": texts[0], "k": 3}).json()["results"][0]
        assert set(plain) == {"doc_ids", "scores"}
        # invalid: 422 with the filter's own message
        bad = client.post("/search", json={"query": texts[0], "filter": {"term": {"nope": 1}}})
        assert bad.status_code == 422 and "unknown field 'nope'" in bad.text
        bad = client.post("/search", json={"query": texts[0], "filter": {"range": {"first": {"gt": 1}}}})
        assert bad.status_code == 422 and "range needs an int or float field" in bad.text
        bad = client.post("/search", json={"query": texts[0], "fields": ["nope"]})
        assert bad.status_code == 422 and "unknown field 'nope'" in bad.text
        # too large: 413
        big = {"terms": {"first": list("abcdefghij")}}
        assert client.post("/search", json={"query": texts[0], "filter": big}).status_code == 413
        many = {"query": texts[0], "fields": ["title", "tlen", "first", "long"]}
        assert client.post("/search", json=many).status_code == 413
        assert client.post("/search", json={"query": texts[0], "explain": True,
                                            "explain_terms": 17}).status_code == 413
        spec = client.get("/openapi.json").json()
        props = spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"][
            "schema"]["properties"]
        assert {"filter", "fields", "explain", "explain_terms"} <= set(props)
    finally:
        stop_endpoint(name)
