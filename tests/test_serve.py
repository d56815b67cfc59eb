"""The query endpoint on a real local Ray Serve, over HTTP, against a real built scifact index.

Two endpoints run one after the other (each shared by the tests of its class):
* `TestEndpoint`: API key on, QueryEncoder deployment, 3 shards in 2 groups (2 + 1), 2
  replicas per group, and a direct port (the ingress's own HTTP server); answers, validation
  and auth on both ports, stats/metrics, partial results, replica loss.
* `TestGenerations`: no auth, encoder inside the ingress, CURRENT polled every second, on a
  copy of the index; generation switches by `POST /admin/reload` and by polling under load,
  and a generation that cannot load refused while the old one keeps answering.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import SCIFACT_HEAD_DOCS, free_port
from serve_fixtures import ConcurrentLoad, LoadLoop, replica_actors, serve_http_port, serve_index, wait_until  # noqa: F401

N_SHARDS = 3          # the scifact head at shard_size=500 (conftest)
KEY_ENV = "LSR_TEST_SERVE_KEY"


def read_queries(scifact_dir: Path, n: int) -> list[str]:
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


def hits(index, texts: list[str], k: int, exact: bool = False) -> list[tuple[list[str], list[float]]]:
    return [([h.doc_id for h in row], [h.score for h in row])
            for row in index.search(texts, k=k, exact=exact)]


def assert_same(served: dict, expected: tuple[list[str], list[float]]) -> None:
    ids, scores = expected
    assert served["doc_ids"] == ids
    np.testing.assert_allclose(served["scores"], scores, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def in_process(serve_index):
    from pipeline.search import ShardedIndex

    return ShardedIndex.open(serve_index)


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="class")
def endpoint(serve_index, ray_local):
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    key = secrets.token_urlsafe(24)
    config = ServeConfig(index=serve_index, app_name="lsrt", route_prefix="/t", topology="split",
                         replicas_per_shard=2, shards_per_replica=2, api_key_env=KEY_ENV,
                         timeout_s=3.0, poll_s=0, max_queries=8, max_body_bytes=16_384,
                         server_id="test-endpoint", direct_port=free_port())
    port = serve_http_port()
    run_endpoint(config, ingress_env={KEY_ENV: key})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/t", timeout=30.0)
    yield client, {"X-API-Key": key}, config
    client.close()
    stop_endpoint(config.app_name)


@pytest.fixture(scope="class")
def direct_client(endpoint):
    """A client of the ingress replica's own HTTP server (``direct_port``), same prefix."""
    _, _, config = endpoint
    client = httpx.Client(base_url=config.direct_urls()[0].removesuffix("/search"), timeout=30.0)
    yield client
    client.close()


@pytest.fixture(params=["serve-port", "direct-port"])
def any_port(request, endpoint, direct_client):
    """(client, auth headers) for Serve's port, then for the ingress's own port: both answer
    /search with the same handlers, so every check holds on both."""
    client, auth, _ = endpoint
    return (client if request.param == "serve-port" else direct_client), auth


class TestEndpoint:
    def test_answers_equal_in_process_search(self, any_port, in_process, scifact_dir):
        client, auth = any_port
        queries = read_queries(scifact_dir, 24)
        for text in queries[:16]:  # one at a time: same encoder batch as in process
            r = client.post("/search", json={"query": text, "k": 10}, headers=auth)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["generation"] == in_process.generation
            assert body["shards"] == [s.entry.name for s in in_process.shards]
            assert body["partial"] is False and body["missing_shards"] == []
            assert set(body["timing"]) == {"encode_ms", "search_ms", "total_ms"}
            assert_same(body["results"][0], hits(in_process, [text], 10)[0])
        batch = queries[16:24]
        r = client.post("/search", json={"queries": batch, "k": 25}, headers=auth)
        assert r.status_code == 200, r.text
        for served, expected in zip(r.json()["results"], hits(in_process, batch, 25), strict=True):
            assert_same(served, expected)
        r = client.post("/search", json={"query": queries[0], "k": 5, "exact": True}, headers=auth)
        assert r.status_code == 200 and r.json()["exact"] is True
        assert_same(r.json()["results"][0], hits(in_process, [queries[0]], 5, exact=True)[0])
        r = client.post("/search", json={"query": queries[1], "k": 10, "query_cut": 3,
                                         "heap_factor": 0.5}, headers=auth)
        assert r.status_code == 200
        expected = in_process.search([queries[1]], k=10, query_cut=3, heap_factor=0.5)[0]
        assert r.json()["results"][0]["doc_ids"] == [h.doc_id for h in expected]

    @pytest.mark.parametrize("body, status, fragment", [
        ({"query": "", "k": 10}, 422, "query is empty"),
        ({"query": "   ", "k": 10}, 422, "query is empty"),
        ({"queries": [], "k": 10}, 422, "queries is empty"),
        ({"queries": ["ok", " "], "k": 10}, 422, "queries [1] are empty"),
        ({"k": 10}, 422, "exactly one of"),
        ({"query": "a", "queries": ["b"]}, 422, "exactly one of"),
        ({"query": "heart", "k": 0}, 422, "greater than or equal to 1"),
        ({"query": "heart", "k": 1001}, 422, "less than or equal to 1000"),
        ({"queries": ["heart"] * 9, "k": 10}, 422, "at most 8 per request"),
        ({"query": "heart", "k": 10, "top": 3}, 422, "Extra inputs are not permitted"),
        ({"query": "heart", "heap_factor": -1}, 422, "greater than 0"),
        ({"query": "x" * 3000}, 422, "exceed 2048 characters"),
        ({"queries": ["heart disease"] * 8, "pad": "x" * 20_000}, 413, "larger than 16384 bytes"),
    ])
    def test_validation(self, any_port, body, status, fragment):
        client, auth = any_port
        r = client.post("/search", json=body, headers=auth)
        assert r.status_code == status, r.text
        assert fragment in r.text

    def test_malformed_json_is_422(self, any_port):
        client, auth = any_port
        r = client.post("/search", content=b"{not json", headers={**auth, "content-type": "application/json"})
        assert r.status_code == 422

    @pytest.mark.parametrize("raw, fragment", [
        (b'{"query": "heart", "heap_factor": NaN}', "finite number"),
        (b'{"query": "heart", "heap_factor": 1e400}', "finite number"),
        (b'{"query": "heart", "heap_factor": -Infinity}', "finite number"),
        (b'{"query": "\xff\xfe heart"}', "json_invalid"),
        (b'\xff\xfe\x00{', "json_invalid"),
        (b'{"query": "heart", "exact": "yes"}', "valid boolean"),
        (b'{"query": "heart", "exact": 1}', "valid boolean"),
        (b'{"query": "heart", "allow_partial": "no"}', "valid boolean"),
        (b'{"query": "heart", "k": 10.5}', "valid integer"),
        (b'{"query": "heart", "k": "10"}', "valid integer"),
        (b'{"query": "heart", "k": true}', "valid integer"),
        (b'{"query": "heart", "query_cut": 2.0}', "valid integer"),
        (b'{"query": "heart", "heap_factor": "0.5"}', "valid number"),
        (b'{"query": "heart", "heap_factor": false}', "valid number"),
        (b'{"query": 5}', "valid string"),
        (b'{"queries": "heart"}', "valid array"),
        (b'[1, 2]', "model_type"),
        (b'', "json_invalid"),
    ])
    def test_bad_values_are_strict_4xx_with_a_renderable_body(self, any_port, raw, fragment):
        client, auth = any_port
        r = client.post("/search", content=raw, headers={**auth, "content-type": "application/json"})
        assert r.status_code == 422, r.text
        body = r.json()                     # always valid JSON
        assert body["detail"] and fragment in r.text

    def test_api_key(self, endpoint, direct_client):
        client, auth, _ = endpoint
        body = {"query": "vitamin d", "k": 3}
        for c in (client, direct_client):
            assert c.post("/search", json=body).status_code == 401
            assert c.post("/search", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
            assert c.post("/search", json=body, headers=auth).status_code == 200
        assert client.get("/stats").status_code == 401
        assert client.post("/admin/reload").status_code == 401
        assert client.get("/healthz").json() == {"status": "ok", "generation": 1}
        spec = client.get("/openapi.json").json()
        assert {"/search", "/healthz", "/stats", "/metrics", "/admin/reload"} <= set(spec["paths"])
        assert spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]

    def test_direct_port_routes(self, endpoint, direct_client):
        """The ingress's own port answers every route of the Serve app, auth included; an
        unknown route gets a 404 naming the routes, a wrong method a 405."""
        _, auth, _ = endpoint
        assert direct_client.get("/healthz").json() == {"status": "ok", "generation": 1}
        assert "lsr_generation" in direct_client.get("/metrics").text
        assert direct_client.get("/stats").status_code == 401
        stats = direct_client.get("/stats", headers=auth).json()
        assert stats["generation"] == 1 and stats["n_shards"] == N_SHARDS
        assert direct_client.post("/admin/reload").status_code == 401
        spec = direct_client.get("/openapi.json").json()
        assert {"/search", "/healthz", "/stats", "/metrics", "/admin/reload"} <= set(spec["paths"])
        assert "/t/openapi.json" in direct_client.get("/docs").text
        r = direct_client.get("/nothing")
        assert r.status_code == 404 and "/t/search" in r.json()["detail"]
        assert direct_client.get("/search").status_code == 405

    def test_stats_and_metrics(self, endpoint, in_process):
        client, auth, _ = endpoint
        stats = client.get("/stats", headers=auth).json()
        assert stats["generation"] == 1 and stats["n_shards"] == N_SHARDS
        assert stats["n_docs"] == in_process.n_docs == SCIFACT_HEAD_DOCS
        assert [s["name"] for s in stats["shards"]] == [s.entry.name for s in in_process.shards]
        assert all(s["state"] == "ok" for s in stats["shards"])
        assert stats["controller"]["generation"] == 1 and stats["controller"]["retiring"] == []
        text = client.get("/metrics").text
        ok = _metric(text, 'lsr_search_requests_total{status="ok"}')
        rejected = _metric(text, 'lsr_search_requests_total{status="rejected"}')
        assert ok >= 1 and rejected >= 1
        assert _metric(text, "lsr_search_latency_seconds_count") >= ok
        assert _metric(text, "lsr_generation") == 1

    def test_unresponsive_shard_gives_partial_or_503(self, endpoint, in_process, ray_local):
        """Both replicas of the last group stopped (SIGSTOP): its shard is missing."""
        from ray import serve

        from pipeline.search import merge_top_k

        client, auth, config = endpoint
        group = serve.get_deployment_handle("ShardSearcher-g000001-001", "lsrt-g000001-001")
        pids = {group.info.remote().result()["pid"] for _ in range(40)}
        assert len(pids) == 2
        text = "hypertension treatment in elderly patients"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            r = client.post("/search", json={"query": text, "k": 10}, headers=auth)
            assert r.status_code == 200, r.text
            assert time.monotonic() - started < config.timeout_s + 2
            body = r.json()
            last = in_process.shards[-1].entry.name
            assert body["partial"] is True and body["missing_shards"] == [last]
            assert body["shards"] == [s.entry.name for s in in_process.shards[:-1]]
            queries = in_process.encoder().encode_queries([text])
            expected = merge_top_k([s.search(queries, 10) for s in in_process.shards[:-1]], 10)[0]
            assert body["results"][0]["doc_ids"] == [h.doc_id for h in expected]
            r = client.post("/search", json={"query": text, "k": 10, "allow_partial": False},
                            headers=auth)
            assert r.status_code == 503
            assert r.json()["detail"]["missing_shards"] == [last]
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        metrics = client.get("/metrics").text
        assert _metric(metrics, "lsr_partial_responses_total") >= 1
        wait_until(lambda: client.post("/search", json={"query": text}, headers=auth)
                   .json().get("partial") is False, 30, "full answers after SIGCONT")

    def test_replica_kill_under_load_loses_no_request(self, endpoint, scifact_dir, ray_local):
        client, auth, _ = endpoint
        victims = replica_actors("lsrt-g000001-000")
        assert len(victims) == 2
        with LoadLoop(httpx.Client(base_url=str(client.base_url), timeout=30.0), "/search",
                      read_queries(scifact_dir, 50), headers=auth) as loop:
            loop.wait_for(20)
            ray_local.kill(victims[0], no_restart=True)
            loop.wait_for(60)
        assert loop.errors == [] and loop.partial == 0
        assert len(loop.statuses) >= 80 and set(loop.statuses) == {200}
        # Serve replaces the replica; the endpoint is whole again.
        wait_until(lambda: len(replica_actors("lsrt-g000001-000")) == 2, 60, "replacement replica")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="class")
def generations_endpoint(serve_index, ray_local, tmp_path_factory):
    """A copy of the index served without auth, encoder in the ingress, CURRENT polled at 1 s."""
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    root = tmp_path_factory.mktemp("generations") / "index"
    shutil.copytree(serve_index, root)
    config = ServeConfig(index=str(root), app_name="lsrg", route_prefix="/g", topology="split",
                         encoder_placement="ingress", shards_per_replica=0, poll_s=1.0,
                         route_refresh_s=0.2, timeout_s=5.0, server_id="test-generations")
    port = serve_http_port()
    run_endpoint(config)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/g", timeout=60.0)
    yield client, str(root), config
    client.close()
    stop_endpoint(config.app_name)


def write_modified_generation(root: str, generation: int, n_shards: int, drop: int) -> None:
    """Generation `generation`: gen 1's vectors minus the first `drop` documents, with every
    weight of term ids below 2000 doubled, in `n_shards` shards."""
    from pipeline.testing.direct_writer import write_generation
    from pipeline.catalog import IndexLayout, read_manifest
    from pipeline.format import read_postings

    layout = IndexLayout.at(root)
    first = read_manifest(layout, 1)
    parts = [read_postings(layout.postings(s.name)) for s in first.shards]
    vectors = sp.vstack([p.vectors for p in parts], format="csr")[drop:]
    ids = np.concatenate([p.doc_ids for p in parts])[drop:]
    vectors.data[vectors.indices < 2000] *= 2.0
    write_generation(root, generation, ids, vectors, n_shards, first.encoder,
                     index_params=first.index["params"], parent_generation=generation - 1)


def _clients_searching(client: httpx.Client, scifact_dir, generations: set[int]):
    """8 concurrent clients searching until stopped; every answer must come whole from one
    of ``generations``."""
    queries = read_queries(scifact_dir, 30)
    return ConcurrentLoad(str(client.base_url), lambda c, i: (
        {"query": queries[(c * 7 + i) % len(queries)], "k": 10}, None),
        clients=8, max_requests=100_000, max_seconds=400.0, generations=generations)


class TestGenerations:
    def test_reload_switches_generation_under_load(self, generations_endpoint, scifact_dir):
        from pipeline.catalog.leases import read_leases
        from pipeline.catalog import IndexLayout
        from pipeline.search import ShardedIndex

        client, root, config = generations_endpoint
        queries = read_queries(scifact_dir, 30)
        with LoadLoop(httpx.Client(base_url=str(client.base_url), timeout=60.0), "/search",
                      queries) as loop:
            loop.wait_for(10)
            write_modified_generation(root, 2, n_shards=2, drop=1000)
            r = client.post("/admin/reload")
            assert r.status_code == 200, r.text
            assert r.json()["generation"] == 2 and r.json()["previous"] == 1
            after = client.post("/search", json={"query": queries[0], "k": 10}).json()
            assert after["generation"] == 2      # the replica that reloaded answers from gen 2 at once
            loop.wait_for(20)
        assert loop.errors == [] and set(loop.statuses) == {200} and loop.partial == 0
        assert loop.generations[0] == 1 and loop.generations[-1] == 2
        assert loop.generations == sorted(loop.generations)  # never back to the old generation
        second = ShardedIndex.open(root, generation=2)
        r = client.post("/search", json={"queries": queries[:5], "k": 10}).json()
        assert r["shards"] == [s.entry.name for s in second.shards]
        for served, expected in zip(r["results"], hits(second, queries[:5], 10), strict=True):
            assert_same(served, expected)
        # The old generation is drained and deleted; the lease follows.
        wait_until(lambda: client.get("/stats").json()["controller"]["retiring"] == [], 60,
                   "generation 1 retired")
        from ray import serve

        assert not [a for a in serve.status().applications if a.startswith("lsrg-g000001")]
        lease = {x.server_id: x for x in read_leases(IndexLayout.at(root))}["test-generations"]
        assert lease.generation == 2 and lease.generations == (2,) and not lease.expired()

    def test_generation_that_cannot_load_is_refused_and_old_keeps_serving(
            self, generations_endpoint, scifact_dir):
        from ray import serve

        from pipeline.catalog import IndexLayout, read_manifest

        client, root, _ = generations_endpoint
        write_modified_generation(root, 3, n_shards=2, drop=0)
        broken = read_manifest(IndexLayout.at(root), 3).shards[1].name
        shutil.rmtree(Path(root) / "shards" / broken / "index")
        with _clients_searching(client, scifact_dir, {2}) as load:
            load.wait_for(5)
            r = client.post("/admin/reload")
            load.wait_for(5)
            load.stop()
        # Refused by the pre-deploy check (the index is missing), naming the shard.
        assert r.status_code == 503 and "generation 3 could not be served" in r.json()["detail"]
        assert f"shard {broken}" in r.json()["detail"] and "no index here" in r.json()["detail"]
        load.assert_clean(min_answered=10)
        # Serve deletes the failed generation's applications asynchronously (a replica still
        # retrying its constructor must stop first): they must be gone soon, not at once.
        wait_until(lambda: not [a for a in serve.status().applications if a.startswith("lsrg-g000003")],
                   90, "the failed generation's applications to be deleted", interval_s=1.0)

    def test_polling_picks_up_a_new_generation(self, generations_endpoint, scifact_dir):
        client, root, _ = generations_endpoint
        with LoadLoop(httpx.Client(base_url=str(client.base_url), timeout=60.0), "/search",
                      read_queries(scifact_dir, 30)) as loop:
            loop.wait_for(5)
            write_modified_generation(root, 4, n_shards=4, drop=0)
            wait_until(lambda: loop.generations and loop.generations[-1] == 4, 90,
                       "responses from generation 4")
            loop.wait_for(10)
        assert loop.errors == [] and set(loop.statuses) == {200} and loop.partial == 0
        assert set(loop.generations) == {2, 4} and loop.generations == sorted(loop.generations)
        stats = client.get("/stats").json()
        assert stats["generation"] == 4 and stats["n_shards"] == 4 and stats["n_docs"] == SCIFACT_HEAD_DOCS

    def test_generation_whose_replica_cannot_load_is_refused(self, generations_endpoint,
                                                              scifact_dir):
        """A corrupt chunk passes the pre-deploy check (only a load reads it): the searcher
        replica's constructor fails, Serve gives up on it after its retries, the reload
        answers 503 and generation 4 serves 8 concurrent clients throughout. (Serve's retries start new worker
        processes, so this reload may take a minute on a slow machine: a longer client
        timeout, not a shorter wait.)"""
        from ray import serve

        from pipeline.catalog import IndexLayout, read_manifest

        client, root, _ = generations_endpoint
        write_modified_generation(root, 5, n_shards=2, drop=0)
        corrupt = read_manifest(IndexLayout.at(root), 5).shards[0].name
        words = Path(root) / "shards" / corrupt / "index" / "fwd_words"
        chunk = next(p for p in words.rglob("*") if p.is_file() and p.name != "zarr.json")
        with open(chunk, "r+b") as f:
            f.seek(16)
            f.write(b"\xff\xfe\xfd\xfc")
        with _clients_searching(client, scifact_dir, {4}) as load:
            load.wait_for(5)
            r = client.post("/admin/reload", timeout=300.0)
            load.wait_for(5)
            load.stop()
        assert r.status_code == 503 and "generation 5 could not be served" in r.json()["detail"]
        load.assert_clean(min_answered=10)
        wait_until(lambda: not [a for a in serve.status().applications if a.startswith("lsrg-g000005")],
                   90, "the failed generation's applications to be deleted", interval_s=1.0)
