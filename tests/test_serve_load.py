"""The endpoint under concurrent load, on a real local Ray Serve over HTTP (issue 11).

A small real index (the first 600 scifact documents, encoded by splade-tiny, 3 shards) keeps
these tests short. Each endpoint is shared by the tests of its class:

* `TestSplit`: split topology, encoder inside the ingress, 2 searcher groups, search_threads=2
  (batches run numba's parallel kernels): concurrent first exact requests, then 8 clients
  mixing exact and blocked, single queries and batches; a controller restart under load.
* `TestEmbedded`: embedded topology: the same load; single queries micro-batched across 8
  clients answer exactly as in-process search; a switch slowed past the lease TTL while
  garbage collection runs.
Plus, without Ray: concurrent batches through `pipeline.search` under numba's workqueue
threading layer, which aborts the process on concurrent entry into its pool; the single-query
encoding fast path against the encoder. And `lsr serve` (its own Ray) stopped by SIGTERM or
SIGINT at the driver or its process group (SIGINT to the driver in the default run, the
others marked slow; the own-ports load test ends with SIGTERM to the group).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO, free_port, tiny_encoder
from serve_fixtures import ConcurrentLoad, serve_http_port, wait_until

N_DOCS = 600
N_SHARDS = 3


def _texts(scifact_dir: Path, n: int) -> list[str]:
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


@pytest.fixture(scope="module")
def small_index(scifact_dir, tmp_path_factory) -> str:
    """Generation 1 of the first N_DOCS scifact documents, 3 blocked shards."""
    from pipeline.data.records import parse_record
    from pipeline.testing.direct_writer import write_generation

    root = tmp_path_factory.mktemp("serve-load") / "index"
    docs = []
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(N_DOCS)):
            docs.append(parse_record(json.loads(line)))
    encoder = tiny_encoder()
    vectors = encoder.encode([t for _, t in docs])
    write_generation(str(root), 1, [i for i, _ in docs], vectors, N_SHARDS, encoder.settings(),
                     index_params={"n_postings": 200, "centroid_fraction": 0.2})
    return str(root)


@pytest.fixture(scope="module")
def queries(scifact_dir) -> list[str]:
    return _texts(scifact_dir, 40)


def _expected(root: str, texts: list[str], generation: int = 1) -> dict:
    """In-process answers: (text, k, exact) -> (ids, scores), by the same code path."""
    from pipeline.search import ShardedIndex

    index = ShardedIndex.open(root, generation=generation)
    out = {}
    for exact in (False, True):
        for text, hits in zip(texts, index.search(texts, k=10, exact=exact)):
            out[(text, exact)] = ([h.doc_id for h in hits], [h.score for h in hits])
    return out


def _mixed_requests(texts: list[str], expected: dict, generation: int = 1):
    """Request i: single or batch of 4, exact or blocked, each checked against `expected`."""
    def make(client_no: int, i: int):
        exact = (i + client_no) % 3 == 0
        if i % 2:
            batch = [texts[(i + j) % len(texts)] for j in range(4)]
            body = {"queries": batch, "k": 10, "exact": exact}
        else:
            batch = [texts[i % len(texts)]]
            body = {"query": batch[0], "k": 10, "exact": exact}

        def check(answer: dict) -> str | None:
            if answer["generation"] != generation:
                return None     # checked by the load fixture
            for text, got in zip(batch, answer["results"], strict=True):
                ids, scores = expected[(text, exact)]
                if got["doc_ids"] != ids or not np.allclose(got["scores"], scores, rtol=1e-5,
                                                            atol=1e-6):
                    return f"wrong answer for {text!r} (exact={exact})"
            return None
        return body, check
    return make


def _exact_loads(client: httpx.Client) -> list[int]:
    stats = client.get("/stats").json()
    loads = {}
    for shard in stats["shards"]:
        loads[shard["name"]] = shard["replica"]["exact_loads"][shard["name"]]
    return [loads[name] for name in sorted(loads)]


def _first_exact_concurrently(client: httpx.Client, texts: list[str], expected: dict) -> None:
    """8 concurrent first exact requests: all answered in full, each shard's exact index built once."""
    assert _exact_loads(client) == [0] * N_SHARDS

    def make(client_no: int, i: int):
        ids = expected[(texts[i], True)][0]
        return ({"query": texts[i], "k": 10, "exact": True},
                lambda a: None if a["results"][0]["doc_ids"] == ids else "wrong exact answer")

    with ConcurrentLoad(str(client.base_url), make, clients=8, max_requests=8,
                        generations={1}) as load:
        pass
    load.assert_clean(min_answered=8)
    assert _exact_loads(client) == [1] * N_SHARDS


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="class")
def split_endpoint(small_index, ray_local, tmp_path_factory):
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    root = tmp_path_factory.mktemp("split") / "index"
    shutil.copytree(small_index, root)
    config = ServeConfig(index=str(root), app_name="lsrs", route_prefix="/s", topology="split",
                         encoder_placement="ingress", shards_per_replica=2, search_threads=2,
                         poll_s=0, route_refresh_s=0.2, timeout_s=10.0, server_id="test-split")
    port = serve_http_port()
    run_endpoint(config)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/s", timeout=60.0)
    yield client, str(root), config
    client.close()
    stop_endpoint(config.app_name)


class TestSplit:
    def test_concurrent_first_exact_requests_build_once(self, split_endpoint, queries):
        client, root, _ = split_endpoint
        _first_exact_concurrently(client, queries, _expected(root, queries))

    def test_mixed_load_with_ingress_encoder(self, split_endpoint, queries):
        client, root, _ = split_endpoint
        expected = _expected(root, queries)
        with ConcurrentLoad(str(client.base_url), _mixed_requests(queries, expected), clients=8,
                            max_requests=160, generations={1}) as load:
            pass
        load.assert_clean(min_answered=160)

    def test_controller_restart_under_load(self, split_endpoint, queries, ray_local):
        """A switch, then the controller killed (Serve restarts it) while generation 1 may
        still be draining: no request fails, generation 1 is drained and then deleted."""
        from ray import serve

        from test_serve import write_modified_generation

        client, root, _ = split_endpoint
        write_modified_generation(root, 2, n_shards=2, drop=0)
        with ConcurrentLoad(str(client.base_url),
                            lambda c, i: ({"query": queries[i % len(queries)], "k": 10}, None),
                            clients=8, max_requests=100_000, max_seconds=240,
                            generations={1, 2}) as load:
            load.wait_for(20)
            r = client.post("/admin/reload")
            assert r.status_code == 200, r.text
            controller = _controller_actor("lsrs")
            ray_local.kill(controller, no_restart=False)
            load.wait_for(40)
            # while the controller restarts, /stats reports {"error": ...} in its place
            wait_until(lambda: client.get("/stats").json()["controller"].get("generation") == 2,
                       120, "the restarted controller")
            load.wait_for(40)
            load.stop()
        load.assert_clean(min_answered=100)
        wait_until(lambda: not [a for a in serve.status().applications
                                if a.startswith("lsrs-g000001")], 120, "generation 1 deleted")


def _controller_actor(app: str):
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#IndexController")]
    assert len(names) == 1, names
    return ray.get_actor(names[0], namespace="serve")


# ---------------------------------------------------------------------------------------------
SWITCH_DELAY_S = 6.0
LEASE_TTL_S = 1.5


@pytest.fixture(scope="class")
def embedded_endpoint(small_index, ray_local, tmp_path_factory):
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    root = tmp_path_factory.mktemp("embedded") / "index"
    shutil.copytree(small_index, root)
    config = ServeConfig(index=str(root), app_name="lsre", route_prefix="/e",
                         topology="embedded", poll_s=0, route_refresh_s=0.2, timeout_s=10.0,
                         lease_ttl_s=LEASE_TTL_S, server_id="test-embedded")
    port = serve_http_port()
    run_endpoint(config, controller_env={"LSR_TEST_SWITCH_DELAY_S": str(SWITCH_DELAY_S)})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/e", timeout=60.0)
    yield client, str(root), config
    client.close()
    stop_endpoint(config.app_name)


class TestEmbedded:
    def test_concurrent_first_exact_requests_build_once(self, embedded_endpoint, queries):
        client, root, _ = embedded_endpoint
        assert client.get("/stats").json()["topology"] == "embedded"
        from ray import serve

        assert not [a for a in serve.status().applications if a.startswith("lsre-")]
        _first_exact_concurrently(client, queries, _expected(root, queries))

    def test_mixed_load(self, embedded_endpoint, queries):
        client, root, _ = embedded_endpoint
        expected = _expected(root, queries)
        with ConcurrentLoad(str(client.base_url), _mixed_requests(queries, expected), clients=8,
                            max_requests=160, generations={1}) as load:
            pass
        load.assert_clean(min_answered=160)

    def test_micro_batched_single_queries_equal_in_process_search(self, embedded_endpoint,
                                                                   queries):
        """8 clients of single queries (blocked with the index's and with per-request
        parameters, and exact) go through the ingress micro-batching: every answer is exactly
        (ids, float32 scores) what in-process search of that query alone returns."""
        from pipeline.search import ShardedIndex

        client, root, config = embedded_endpoint
        assert config.embedded_batch_size > 1
        variants = [{"exact": False}, {"exact": False, "query_cut": 5, "heap_factor": 0.8},
                    {"exact": True}]
        index = ShardedIndex.open(root, generation=1)
        expected = {}
        for v, params in enumerate(variants):
            for text in queries:
                hits = index.search([text], k=10, **params)[0]
                expected[(text, v)] = ([h.doc_id for h in hits],
                                       np.asarray([h.score for h in hits], np.float32))
        before = client.get("/stats").json()["batching"]

        def make(client_no: int, i: int):
            text, v = queries[(i * 7 + client_no) % len(queries)], (i + client_no) % len(variants)

            def check(answer: dict) -> str | None:
                got = answer["results"][0]
                ids, scores = expected[(text, v)]
                if got["doc_ids"] != ids or not np.array_equal(
                        np.asarray(got["scores"], np.float32), scores):
                    return f"batched answer differs for {text!r} ({variants[v]})"
                return None
            return {"query": text, "k": 10, **variants[v]}, check

        with ConcurrentLoad(str(client.base_url), make, clients=8, max_requests=240,
                            generations={1}) as load:
            pass
        load.assert_clean(min_answered=240)
        after = client.get("/stats").json()["batching"]
        batches = after["batches"] - before["batches"]
        requests = after["requests"] - before["requests"]
        assert requests == 240 and batches < requests, (batches, requests)

    def test_slow_switch_keeps_the_lease_while_gc_runs(self, embedded_endpoint, queries):
        """The switch takes SWITCH_DELAY_S > 4 lease TTLs; GC runs all along, keeping one
        generation: generation 1 (served until the flip) must never be collected."""
        from pipeline.catalog import IndexLayout, collect_garbage, list_generations
        from test_serve import write_modified_generation

        client, root, _ = embedded_endpoint
        layout = IndexLayout.at(root)
        write_modified_generation(root, 2, n_shards=2, drop=0)
        reload: dict = {}
        thread = threading.Thread(target=lambda: reload.update(r=client.post("/admin/reload")))
        collected = []
        with ConcurrentLoad(str(client.base_url),
                            lambda c, i: ({"query": queries[i % len(queries)], "k": 10}, None),
                            clients=4, max_requests=100_000, max_seconds=120,
                            generations={1, 2}) as load:
            thread.start()
            while thread.is_alive():
                report = collect_garbage(layout, keep_generations=1, min_age_s=0)
                collected.extend(report.deleted_generations)
                time.sleep(0.3)
            thread.join()
            load.wait_for(10)
            load.stop()
        assert reload["r"].status_code == 200, reload["r"].text
        assert collected == [] and 1 in list_generations(layout)
        load.assert_clean(min_answered=10)
        assert client.post("/search", json={"query": queries[0]}).json()["generation"] == 2


# ---------------------------------------------------------------------------------------------
def test_concurrent_batches_under_workqueue_threading_layer(small_index):
    """4 threads searching 16-query batches with 2 numba threads each, exact and blocked,
    under NUMBA_THREADING_LAYER=workqueue (which aborts on concurrent entry): the process
    survives and every thread gets the same answers as a serial search."""
    script = textwrap.dedent(f"""
        import threading
        import numpy as np
        import scipy.sparse as sp
        from pipeline.search import ShardedIndex

        index = ShardedIndex.open({small_index!r})
        docs = sp.vstack([s.exact_index().docs for s in index.shards], format="csr")
        queries = docs[:16]
        expected = {{exact: index.search_rows(queries, 10, exact=exact, threads=1)
                     for exact in (True, False)}}
        errors = []

        def work(exact):
            try:
                for _ in range(20):
                    for shard in index.shards:
                        shard.search(queries, 10, exact=exact, threads=2)
                    rows, scores = index.search_rows(queries, 10, exact=exact, threads=2)
                    if not (rows == expected[exact][0]).all():
                        errors.append("different rows")
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        import numba
        assert numba.threading_layer() == "workqueue", numba.threading_layer()
        assert not errors, errors
        print("ok")
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, target", [
    # SIGTERM to the group also ends test_lsr_serve_own_ports_under_load (default run)
    pytest.param("SIGTERM", "group", id="sigterm-group", marks=pytest.mark.slow),
    pytest.param("SIGINT", "driver", id="sigint-driver"),
    pytest.param("SIGTERM", "driver", id="sigterm-driver", marks=pytest.mark.slow),
    pytest.param("SIGINT", "group", id="sigint-group", marks=pytest.mark.slow),
])
def test_lsr_serve_stops_cleanly_on_signal(small_index, sig, target):
    """`lsr serve` (its own local Ray) gets SIGTERM/SIGINT at the driver or its whole process
    group: exit status 0 within 30 s, and no process it started is left."""
    port = free_port()
    proc, started = _start_lsr_serve(small_index, port, "lsrstop")
    try:
        _wait_healthy(proc, started, [f"http://127.0.0.1:{port}"])
        _signal_and_check_stopped(proc, started, sig, target)
    finally:
        _kill_leftovers(proc, started)


def test_lsr_serve_refuses_a_port_in_use_before_starting(small_index):
    """A port already taken fails `lsr serve` at once, with one line naming it (no Ray started,
    no replica retrying its constructor)."""
    import socket

    from ray_procs import subprocess_env

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    try:
        lsr = Path(sys.executable).with_name("lsr")
        result = subprocess.run([str(lsr), "serve", small_index, "--port", str(port)],
                                env=subprocess_env(PYTHONPATH=str(REPO), RAY_ADDRESS=""),
                                capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        held.close()
    assert result.returncode == 2, result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "Traceback" not in result.stderr


def _free_port_pair() -> int:
    """A port P with P and P + 1 both free (two ingress replicas' own servers)."""
    import socket

    for candidate in range(31100, 31900, 7):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", candidate))
                b.bind(("127.0.0.1", candidate + 1))
            return candidate
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports in 31100..31900")


def test_lsr_serve_own_ports_under_load(small_index, queries):
    """`lsr serve --port P --ingress-replicas 2 --serve-port Q`: each ingress replica answers
    HTTP on its own server (P, P + 1), and Ray Serve's proxy on Q. 8 concurrent clients, 4 on
    each replica's port, mixing exact and blocked, single queries and batches: every answer
    equals in-process search; the proxy's answers too. Then SIGTERM to the process group stops
    everything within 30 s (the replicas' servers drained and closed)."""
    port, serve_port = _free_port_pair(), free_port()
    proc, started = _start_lsr_serve(small_index, port, "lsrdirect", "--ingress-replicas", "2",
                                     "--serve-port", str(serve_port), "--access-log",
                                     env={"LSR_SERVE_TRACE": "1"})
    try:
        bases = [f"http://127.0.0.1:{port + i}" for i in range(2)]
        _wait_healthy(proc, started, [f"http://127.0.0.1:{serve_port}", *bases])
        expected = _expected(small_index, queries)
        make = _mixed_requests(queries, expected)
        loads = [ConcurrentLoad(base, make, clients=4, max_requests=80, generations={1})
                 for base in bases]
        for load in loads:
            load.__enter__()
        for load in loads:
            load.join()
            load.assert_clean(min_answered=80)
        with ConcurrentLoad(f"http://127.0.0.1:{serve_port}", make, clients=2, max_requests=20,
                            generations={1}) as through_proxy:
            pass
        through_proxy.assert_clean(min_answered=20)
        _check_timing_headers(bases[0], queries[0])
        _signal_and_check_stopped(proc, started, "SIGTERM", "group")
    finally:
        _kill_leftovers(proc, started)


def _check_timing_headers(base: str, query: str) -> None:
    """Server-Timing names the handler's stages and FastAPI's routing; with LSR_SERVE_TRACE=1
    the replica's clock stamps (same host, same monotonic clock) fall inside the client's
    own interval, arrival before the handler's end (the benchmark's to_app/from_app split)."""
    import asyncio

    from pipeline.serve.timing import parse_clock, parse_server_timing
    from pipeline.testing.rawhttp import RawHTTPClient

    async def one():
        async with RawHTTPClient(base) as client:
            t0 = time.perf_counter()
            r = await client.post("/search", json={"query": query, "k": 5})
            return r, t0, time.perf_counter()

    r, t0, t1 = asyncio.run(one())
    assert r.status_code == 200 and len(r.json()["results"][0]["doc_ids"]) == 5
    stages = parse_server_timing(r.headers["server-timing"])
    assert {"route", "wait", "encode", "search", "merge", "serialize", "ingress"} <= set(stages)
    assert all(ms >= 0 for ms in stages.values())
    arrived, done = parse_clock(r.headers["x-lsr-clock"])
    # The replica's clock is this process's clock (CLOCK_MONOTONIC): its stamps fall inside
    # the client's own interval, and the stages between them fit inside them.
    assert t0 < arrived < done < t1
    assert stages["route"] + stages["ingress"] <= (done - arrived) * 1000 + 0.01


def _start_lsr_serve(index: str, port: int, app_name: str, *extra: str,
                     env: dict[str, str] | None = None):
    from ray_procs import subprocess_env

    lsr = Path(sys.executable).with_name("lsr")
    cmd = [str(lsr), "serve", index, "--port", str(port), "--num-cpus", "2", "--poll-s", "0",
           "--app-name", app_name, *extra]
    proc = subprocess.Popen(cmd, env=subprocess_env(PYTHONPATH=str(REPO), RAY_ADDRESS="",
                                                    **(env or {})),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    return proc, {}


def _record_descendants(proc, started: dict[int, float]) -> None:
    import psutil

    from ray_procs import descendants

    for pid in descendants(proc.pid):
        try:
            started.setdefault(pid, psutil.Process(pid).create_time())
        except psutil.NoSuchProcess:
            pass


def _wait_healthy(proc, started: dict[int, float], bases: list[str]) -> None:
    """Until every base URL answers /healthz, recording the processes `lsr serve` starts."""
    deadline = time.monotonic() + 240
    pending = list(bases)
    while pending:
        _record_descendants(proc, started)
        try:
            if httpx.get(f"{pending[0]}/healthz", timeout=2).status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"lsr serve never answered at {pending[0]}"
        time.sleep(0.5)
    _record_descendants(proc, started)
    assert len(started) >= 3          # at least the Ray head, GCS and raylet


def _signal_and_check_stopped(proc, started: dict[int, float], sig: str, target: str) -> None:
    import signal

    import psutil

    signum = getattr(signal, sig)
    if target == "group":
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    code = proc.wait(timeout=30)      # the bound: stopped within 30 s
    err = proc.stderr.read()
    assert code == 0, err[-3000:]

    def left() -> list[int]:
        alive = []
        for pid, created in started.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    wait_until(lambda: not left(), 10, "every process lsr serve started to end")


def _kill_leftovers(proc, started: dict[int, float]) -> None:
    import psutil

    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in started:           # whatever is left of a failed run
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def test_query_fast_path_equals_the_encoder(scifact_dir):
    """Single-query fast path, each head (int8, bfloat16 screens, full), against `SpladeEncoder.encode_queries`
    of each query alone: the same terms, the same weights up to float32 rounding; and safe
    from several threads at once."""
    import scipy.sparse as sp

    from pipeline.encode.query import QueryFastPath

    reference = tiny_encoder()
    fast = QueryFastPath.from_settings(reference.settings(), device="cpu")
    fast.lean = None        # the HF body here; the lean body: tests/test_query_encode.py
    texts = _texts(scifact_dir, 60)
    expected = sp.vstack([reference.encode_queries([t]) for t in texts], format="csr")
    for screen in QueryFastPath.SCREENS:
        fast.screen = screen
        got = fast.encode_queries(texts)
        assert (got.indptr == expected.indptr).all() and (got.indices == expected.indices).all()
        np.testing.assert_allclose(got.data, expected.data, rtol=1e-5, atol=1e-6)
    results: dict[int, sp.csr_matrix] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: fast.encode_queries(texts)}))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all((results[i] != got).nnz == 0 for i in range(4))
