"""Benchmark of the Ray Serve query endpoint on this machine (127.0.0.1 only).

One synthetic N-document index (`pipeline.testing.synthetic.generate`, written with the
store APIs, cached under --work; the blocked index with `BlockedIndexConfig`'s recorded
defaults unless --n-postings is given), the same real query texts (scifact), measured in
one run:

* in process: encode (the single-query fast path, torch on 1 thread) then search
  (`ShardedIndex.search_rows`, 1 thread), one query at a time; and recall@10 of the blocked
  search against exact search for the same queries (the configuration served);
* served, for each topology: C concurrent HTTP clients (asyncio; ``--http-client raw``, the
  lean `pipeline.testing.rawhttp`, and/or ``httpx``, each measured in turn; one query per
  request, back to back) for T seconds. Per request the client's latency and the server's
  ``Server-Timing`` stages (route, wait, encode, search, merge, serialize, ingress handler);
  the rest of the client's latency (HTTP proxy, routing, client) is reported as
  ``proxy+client``, and split into ``to_app`` / ``from_app`` by the replicas' clock stamps
  (``LSR_SERVE_TRACE=1``, set here for the Ray this script starts).

Topologies:
* embedded: one ingress replica answers HTTP, encodes and searches every shard in process;
  concurrent single queries micro-batched (the default).
* embedded-nobatch: the same without micro-batching; embedded-2r: two ingress replicas.
* split:    QueryEncoder deployment + one ShardSearcher deployment per shard (2 handle hops).
* embedded-direct, embedded-direct-2r, split-direct: the same with ``direct_port``: each ingress
  replica answers on its own HTTP server (`pipeline.serve.direct`), no proxy, no Serve request
  path; with two replicas the clients split over their two ports.

    flock /tmp/lsr-cpu.lock .venv/bin/python jobs/bench_serve.py \
        --docs 1000000 --shards 1 --clients 1,8 --duration-s 20 --out bench-results/serve-embedded.json

--query-cut / --heap-factor are sent with every request and used in process (recall of the
configuration served); --sweep 10:0.9,20:1.0 reports recall and search time per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.testing.machine import describe_machine

TOPOLOGIES = {
    "embedded": {"topology": "embedded"},                      # micro-batching on (default)
    "embedded-nobatch": {"topology": "embedded", "embedded_batch_size": 1},
    "embedded-2r": {"topology": "embedded", "ingress_replicas": 2},
    "split": {"topology": "split", "encoder_placement": "deployment", "shards_per_replica": 1},
    # the ingress replica answers HTTP itself (`direct_port`, uvicorn in the replica): no proxy
    # hop, no Serve request path
    "embedded-direct": {"topology": "embedded", "direct_port": 0},
    "embedded-direct-2r": {"topology": "embedded", "direct_port": 0, "ingress_replicas": 2},
    "split-direct": {"topology": "split", "encoder_placement": "deployment", "shards_per_replica": 1,
                     "direct_port": 0},
}
DIRECT_PORT = 30600
"""First port of the ingress replicas' own HTTP servers in the direct topologies."""


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary(latencies_ms: list[float]) -> dict:
    return {"n": len(latencies_ms), "p50_ms": round(pct(latencies_ms, 50), 3),
            "p95_ms": round(pct(latencies_ms, 95), 3), "p99_ms": round(pct(latencies_ms, 99), 3),
            "mean_ms": round(statistics.fmean(latencies_ms), 3) if latencies_ms else None}


# -- indexes --------------------------------------------------------------------------------------
def encoder_settings(model: str) -> dict:
    from pipeline.encode import SpladeEncoder

    return SpladeEncoder(model, device="cpu").settings()


def prepare_indexes(work: Path, n_docs: int, shard_counts: list[int], seed: int,
                    n_postings_total: int | None, model: str = "splade-tiny") -> dict[int, str]:
    """One index root per shard count over the same documents; reused when already written.

    ``n_postings_total`` None: every shard uses `BlockedIndexConfig`'s defaults. Else each
    shard keeps ``n_postings_total / S`` (the same postings in all for every S).
    """
    from pipeline.testing.direct_writer import write_generation
    from pipeline.catalog import IndexLayout, read_current_generation, read_manifest

    tag = "default" if n_postings_total is None else n_postings_total
    model_tag = "" if model == "splade-tiny" else "-" + Path(model).name
    roots = {s: work / f"synthetic-{n_docs}-seed{seed}-np{tag}{model_tag}-s{s}" for s in shard_counts}
    todo = [s for s, root in roots.items()
            if read_current_generation(IndexLayout.at(str(root))) is None
            or read_manifest(IndexLayout.at(str(root))).n_docs != n_docs]
    if todo:
        from pipeline.testing import synthetic

        started = time.perf_counter()
        docs, _ = synthetic.generate(n_docs, 0, seed)
        print(f"generated {n_docs} synthetic docs ({docs.nnz} nnz) in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        settings = encoder_settings(model)
        ids = [f"d{i}" for i in range(n_docs)]
        for s in todo:
            started = time.perf_counter()
            params = {} if n_postings_total is None else {
                "n_postings": max(1, round(n_postings_total / s))}
            write_generation(str(roots[s]), 1, ids, docs, s, settings, index_params=params)
            print(f"wrote {s}-shard index in {time.perf_counter() - started:.0f}s", flush=True)
    return {s: str(root) for s, root in roots.items()}


def read_queries(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


# -- in process -----------------------------------------------------------------------------------
def timed_rows(index, vectors, k: int, params: dict, exact: np.ndarray) -> dict:
    """Search p50/p99 of the query ``vectors`` one row at a time (1 thread) with ``params``,
    and recall@k of their batch against ``exact``."""
    from pipeline.index import recall_at_k

    times = []
    for i in range(vectors.shape[0]):
        t0 = time.perf_counter()
        index.search_rows(vectors[i], k=k, threads=1, **params)
        times.append((time.perf_counter() - t0) * 1000)
    got, _ = index.search_rows(vectors, k=k, threads=1, **params)
    return {f"recall_at_{k}": round(recall_at_k(got, exact), 4),
            "search_p50_ms": round(pct(times, 50), 3), "search_p99_ms": round(pct(times, 99), 3)}


def in_process(url: str, queries: list[str], k: int, params: dict,
               sweep: list[tuple[int, float]], vector_sets: dict | None = None) -> dict:
    """Encode then search, one query at a time, torch and numba on 1 thread; recall@k of
    the search parameters ``params`` (those served), and of each (query_cut, heap_factor)
    of ``sweep`` with its search p50. ``vector_sets``: named sets of query vectors (CSR rows,
    no encoding) also searched with ``params`` on the same opened index (`timed_rows`),
    reported under their names."""
    from pipeline.encode.query import set_torch_threads
    from pipeline.index import recall_at_k
    from pipeline.search import ShardedIndex

    set_torch_threads(1)
    index = ShardedIndex.open(url)
    encoder = index.encoder()
    for q in queries[:20]:                                   # warm up kernels and the model
        index.search_rows(encoder.encode_queries([q]), k=k, threads=1, **params)
    total, encode, search = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        vectors = encoder.encode_queries([q])
        t1 = time.perf_counter()
        index.search_rows(vectors, k=k, threads=1, **params)
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        encode.append((t1 - t0) * 1000)
        search.append((t2 - t1) * 1000)
    vectors = encoder.encode_queries(queries)
    approx, _ = index.search_rows(vectors, k=k, threads=1, **params)
    exact, _ = index.search_rows(vectors, k=k, exact=True, threads=None)
    recall = recall_at_k(approx, exact)
    swept = []
    for query_cut, heap_factor in sweep:
        one = {"query_cut": query_cut, "heap_factor": heap_factor}
        swept.append({**one, **timed_rows(index, vectors, k, one, exact)})
        print(f"sweep {json.dumps(swept[-1])}", flush=True)
    named = {}
    for name, rows in (vector_sets or {}).items():
        for i in range(min(20, rows.shape[0])):                  # warm up on these rows too
            index.search_rows(rows[i], k=k, threads=1, **params)
        truth, _ = index.search_rows(rows, k=k, exact=True, threads=None)
        named[name] = {"n": rows.shape[0], **timed_rows(index, rows, k, params, truth)}
    index_params = index.manifest.index.get("params", {})
    del index
    return {**summary(total), "encode_p50_ms": round(pct(encode, 50), 3),
            "encode_p99_ms": round(pct(encode, 99), 3),
            "search_p50_ms": round(pct(search, 50), 3), "search_p99_ms": round(pct(search, 99), 3),
            f"recall_at_{k}": round(recall, 4),
            "search_params": params, "sweep": swept,
            "index_params": index_params, "screen": getattr(encoder, "screen", None),
            "lean_body": getattr(encoder, "lean", None) is not None, **named}


# -- served ----------------------------------------------------------------------------------------
async def load(base: str | list[str], queries: list[str], k: int, clients: int,
               duration_s: float, params: dict, on_answer=None, http_client: str = "raw") -> dict:
    """``clients`` concurrent clients for ``duration_s``; with several base URLs (direct
    ingress replicas), client w uses base w mod their number. ``params`` go into every
    request body; ``on_answer(body)`` sees every 200 answer's parsed body (checks of the
    caller's own, e.g. that every hit passes a filter).

    ``http_client``: "raw" (`pipeline.testing.rawhttp`, one keep-alive connection per client)
    or "httpx" (an httpx.AsyncClient per client). When the server stamps its clock
    (``X-LSR-Clock``, `pipeline.serve.timing`; same host, same monotonic clock),
    the time outside the app is split into ``to_app`` (client send, HTTP server, Ray Serve's
    request path up to the app) and ``from_app`` (the way back, up to the client having read
    the response); ``route`` is FastAPI's routing, up to the handler.
    """
    import httpx

    from pipeline.serve.timing import CLOCK_HEADER, parse_clock, parse_server_timing
    from pipeline.testing.rawhttp import RawHTTPClient, RawHTTPError

    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: list[str] = []
    partial = 0
    stop_at = time.perf_counter() + duration_s

    def open_client(url: str):
        if http_client == "raw":
            return RawHTTPClient(url, timeout=30.0)
        if http_client == "httpx":
            return httpx.AsyncClient(base_url=url, timeout=30.0)
        raise ValueError(f"http_client must be raw or httpx, got {http_client!r}")

    async def client(worker: int) -> None:
        nonlocal partial
        url = base if isinstance(base, str) else base[worker % len(base)]
        async with open_client(url) as http:
            i = worker
            while time.perf_counter() < stop_at:
                q = queries[i % len(queries)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await http.post("/search", json={"query": q, "k": k, **params})
                except (httpx.HTTPError, RawHTTPError) as exc:
                    errors.append(f"{type(exc).__name__}")
                    continue
                t1 = time.perf_counter()
                elapsed = (t1 - t0) * 1000
                if r.status_code != 200:
                    errors.append(str(r.status_code))
                    continue
                body = r.json()
                partial += bool(body["partial"])
                if on_answer is not None:
                    on_answer(body)
                latencies.append(elapsed)
                timing = parse_server_timing(r.headers.get("server-timing", ""))
                if "ingress" in timing:
                    timing["proxy+client"] = elapsed - timing["ingress"]
                stamps = parse_clock(r.headers.get(CLOCK_HEADER.lower(), ""))
                if stamps is not None:
                    timing["to_app"] = (stamps[0] - t0) * 1000
                    timing["from_app"] = (t1 - stamps[1]) * 1000
                for name, ms in timing.items():
                    stages.setdefault(name, []).append(ms)

    started = time.perf_counter()
    await asyncio.gather(*(client(w) for w in range(clients)))
    wall = time.perf_counter() - started
    return {**summary(latencies), "qps": round(len(latencies) / wall, 1), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "partial": partial, "http_client": http_client,
            "stages_p50_ms": {name: round(pct(v, 50), 3) for name, v in stages.items()},
            "stages_p99_ms": {name: round(pct(v, 99), 3) for name, v in stages.items()}}


def served(url: str, topology: str, queries: list[str], k: int, clients: list[int],
           duration_s: float, port: int, params: dict,
           http_clients: tuple[str, ...] = ("raw",)) -> list[dict]:
    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    settings = dict(TOPOLOGIES[topology])
    if "direct_port" in settings:
        settings["direct_port"] = DIRECT_PORT
    config = ServeConfig(index=url, app_name="bench", route_prefix="/bench", poll_s=0,
                         timeout_s=10.0, **settings)
    started = time.perf_counter()
    run_endpoint(config)
    startup_s = time.perf_counter() - started
    base = f"http://127.0.0.1:{port}/bench"
    if "direct_port" in settings:
        base = [url.removesuffix("/search") for url in config.direct_urls()]
    rows = []
    try:
        warm = 1 if isinstance(base, str) else len(base)
        asyncio.run(load(base, queries, k, warm, 3.0, params))       # warm up every replica and handle
        for c in clients:
            for http_client in http_clients:
                result = asyncio.run(load(base, queries, k, c, duration_s, params,
                                          http_client=http_client))
                rows.append({"topology": topology, "clients": c, "startup_s": round(startup_s, 1),
                             **result})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_endpoint("bench")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--shards", default="1")
    parser.add_argument("--topologies", default="embedded,split")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--queries", type=Path, default=Path("/work/shared/data/scifact/queries.jsonl"))
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--model", default="splade-tiny",
                        help="Model the index records (its query encoder is what is served), e.g. an "
                             "inference-free folder written by jobs/make_inference_free.py.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-postings-total", type=int, default=None,
                        help="Blocked index n_postings of a 1-shard index; S shards use 1/S of it "
                             "each (default: BlockedIndexConfig's recorded defaults per shard).")
    parser.add_argument("--query-cut", type=int, default=None,
                        help="Per-request query_cut, in process and served (default: the index's).")
    parser.add_argument("--heap-factor", type=float, default=None,
                        help="Per-request heap_factor, in process and served (default: the index's).")
    parser.add_argument("--sweep", default="",
                        help="query_cut:heap_factor pairs, comma-separated: recall@k and search "
                             "time of each, in process (to choose the served parameters).")
    parser.add_argument("--http-client", default="raw",
                        help="Benchmark HTTP clients, comma-separated, each measured in turn: raw "
                             "(pipeline.testing.rawhttp, lean) and/or httpx.")
    parser.add_argument("--skip-served", action="store_true", help="In process only.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lsr-bench-serve"))
    parser.add_argument("--out", type=Path, default=None, help="Write all results as JSON here.")
    parser.add_argument("--prepare-only", action="store_true",
                        help="Write the indexes and exit (untimed: no need for the bench lock).")
    args = parser.parse_args(argv)

    shard_counts = [int(s) for s in args.shards.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    topologies = args.topologies.split(",")
    report = {"command": " ".join([sys.executable, *sys.argv]), "date": dt.datetime.now(
        dt.UTC).isoformat(timespec="seconds"), "machine": describe_machine(), "args": {
        k: str(v) for k, v in vars(args).items()}, "in_process": {}, "served": []}
    print(f"# {report['command']}\n# {report['date']}  {report['machine']}", flush=True)

    args.work.mkdir(parents=True, exist_ok=True)
    roots = prepare_indexes(args.work, args.docs, shard_counts, args.seed, args.n_postings_total,
                            args.model)
    if args.prepare_only:
        print({s: roots[s] for s in shard_counts})
        return
    queries = read_queries(args.queries, args.n_queries)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from pipeline.serve.app import stop_endpoint

    params = {"query_cut": args.query_cut, "heap_factor": args.heap_factor}
    params = {name: v for name, v in params.items() if v is not None}
    sweep = [(int(a), float(b)) for a, b in (p.split(":") for p in args.sweep.split(",") if p)]
    report["search_params"] = params
    for s in shard_counts:
        report["in_process"][s] = in_process(roots[s], queries, args.k, params, sweep)
        print(f"in process, {s} shards: {json.dumps(report['in_process'][s])}", flush=True)

    if args.skip_served:
        print_tables(report)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    report["load_avg_before_served"] = list(os.getloadavg())
    from pipeline.serve.timing import TRACE_ENV

    os.environ[TRACE_ENV] = "1"              # replicas stamp their clock: to_app / from_app split
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for s in shard_counts:
            for topology in topologies:
                for row in served(roots[s], topology, queries, args.k, clients, args.duration_s,
                                  port, params, tuple(args.http_client.split(","))):
                    ref = report["in_process"][s]
                    row.update({"shards": s, "in_process_p50_ms": ref["p50_ms"],
                                "served_over_in_process_p50": round(row["p50_ms"] / ref["p50_ms"], 2)})
                    report["served"].append(row)
    finally:
        stop_endpoint("bench")
        serve.shutdown()
        ray.shutdown()
    print_tables(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_tables(report: dict) -> None:
    print("\n## In process (encode + search, one query at a time, 1 thread)\n")
    print("| shards | p50 ms | p99 ms | encode p50 / p99 | search p50 / p99 | recall@10 vs exact |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s, r in report["in_process"].items():
        print(f"| {s} | {r['p50_ms']} | {r['p99_ms']} | {r['encode_p50_ms']} / {r['encode_p99_ms']} | "
              f"{r['search_p50_ms']} / {r['search_p99_ms']} | {r['recall_at_10']} |")
    print("\n## Served over HTTP (one query per request)\n")
    print("| shards | topology | client | clients | p50 ms | p95 ms | p99 ms | QPS | errors | partial | "
          "served/in-process p50 | stages p50 ms |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in report["served"]:
        stages = ", ".join(f"{k} {v}" for k, v in r["stages_p50_ms"].items())
        print(f"| {r['shards']} | {r['topology']} | {r.get('http_client')} | {r['clients']} | "
              f"{r['p50_ms']} | {r['p95_ms']} | "
              f"{r['p99_ms']} | {r['qps']} | {r['errors']} | {r['partial']} | "
              f"{r['served_over_in_process_p50']} | {stages} |")


if __name__ == "__main__":
    main()
