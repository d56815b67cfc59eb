"""Filtered search latency against selectivity, served over HTTP (and the same index in process).

One synthetic N-document index (`pipeline.testing.synthetic.generate`, seed 0) written with the
direct writer (`pipeline.testing.direct_writer`) together with one filterable field, ``bucket``
(int, uniform in 0..9999, seeded), so ``{"range": {"bucket": {"lt": t}}}`` allows t/10000 of the
documents. Real query texts (scifact), encoded by the index's model (splade-tiny) in the server.

* ``--mode served``: the real endpoint (embedded topology, `pipeline.serve.app.run_endpoint`) on
  127.0.0.1; per selectivity, C concurrent HTTP clients (`bench_serve.load`: the lean raw
  client since 2026-12-02; §12's numbers were taken with httpx; one query per request, back to
  back) for T seconds, unfiltered and filtered at the same k. Every hit of every filtered answer is
  checked against the generated field values (a hit outside the filter counts as a violation);
  failed requests are counted. The first request with a new filter (the filter cache's miss:
  the filter evaluated over the shard) is timed apart and not in the percentiles.
* ``--mode in-process``: the same index, queries and filters through `ShardedIndex` in this
  process: encode (1 torch thread) then ``search_rows`` (1 thread), one query at a time.

* ``--mode prepare``: write the index and exit (untimed; at 1M it peaks at ~13 GB).

Run the modes as separate processes (a loaded 1M index is ~10 GB resident):

    flock /tmp/lsr-cpu.lock .venv/bin/python jobs/bench_filters_served.py --mode served \\
        --docs 1000000 --n-postings 5000 --out bench-results/filters-1m-served.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.bench_serve import encoder_settings, free_port, pct, read_queries, summary  # noqa: E402
from jobs.bench_serve import load as served_load  # noqa: E402
from pipeline.testing.machine import describe_machine  # noqa: E402

BUCKETS = 10_000
SELECTIVITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001)


def bucket_filter(selectivity: float) -> dict:
    return {"range": {"bucket": {"lt": int(round(selectivity * BUCKETS))}}}


def prepare_index(work: Path, n_docs: int, seed: int, n_postings: int | None, n_shards: int
                  ) -> tuple[str, np.ndarray]:
    """The index root and each document's ``bucket`` (row i is doc id ``d{i}``); written once
    and reused."""
    from pipeline.catalog import IndexLayout, read_current_generation
    from pipeline.format.fields import parse_schema
    from pipeline.testing import synthetic
    from pipeline.testing.direct_writer import write_generation

    root = work / f"filters-{n_docs}-seed{seed}-np{n_postings or 'default'}-s{n_shards}"
    buckets = np.random.default_rng(seed + 2).integers(0, BUCKETS, n_docs)
    if read_current_generation(IndexLayout.at(str(root))) is None:
        started = time.perf_counter()
        docs, _ = synthetic.generate(n_docs, 0, seed)
        print(f"generated {n_docs} synthetic docs ({docs.nnz} nnz) in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        started = time.perf_counter()
        params = {} if n_postings is None else {"n_postings": max(1, round(n_postings / n_shards))}
        write_generation(str(root), 1, [f"d{i}" for i in range(n_docs)], docs, n_shards,
                         encoder_settings("splade-tiny"), index_params=params,
                         fields=(parse_schema(["bucket:int"]),
                                 [{"bucket": int(b)} for b in buckets]))
        print(f"wrote {n_shards}-shard index with field bucket in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
    return str(root), buckets


def violations(doc_ids: list[str], buckets: np.ndarray, limit: int | None) -> int:
    """Hits whose bucket is outside ``bucket < limit`` (none for an unfiltered request)."""
    if limit is None:
        return 0
    return int(sum(buckets[int(d[1:])] >= limit for d in doc_ids))


# -- served ---------------------------------------------------------------------------------------
def load(base: str, queries: list[str], k: int, clients: int, duration_s: float,
         flt: dict | None, buckets: np.ndarray) -> dict:
    """`bench_serve.load` with the filter in every request, and every hit checked against
    the generated field values (violations), short answers counted."""
    limit = None if flt is None else flt["range"]["bucket"]["lt"]
    counts = {"hits": 0, "violations": 0, "short": 0}

    def check(body: dict) -> None:
        hits = body["results"][0]["doc_ids"]
        counts["hits"] += len(hits)
        counts["violations"] += violations(hits, buckets, limit)
        counts["short"] += len(hits) < k

    result = asyncio.run(served_load(base, queries, k, clients, duration_s,
                                          {} if flt is None else {"filter": flt}, check))
    stages_p50, stages_p99 = result.pop("stages_p50_ms"), result.pop("stages_p99_ms")
    return {**result, **counts, "server_search_p50_ms": stages_p50.get("search"),
            "server_search_p99_ms": stages_p99.get("search")}


def first_request(base: str, query: str, k: int, flt: dict) -> float:
    """Latency (ms) of one request with a filter the server has not seen (cache miss)."""
    import httpx

    t0 = time.perf_counter()
    r = httpx.post(f"{base}/search", json={"query": query, "k": k, "filter": flt}, timeout=60.0)
    r.raise_for_status()
    return round((time.perf_counter() - t0) * 1000, 3)


def run_served(root: str, buckets: np.ndarray, queries: list[str], args) -> list[dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from pipeline.serve import ServeConfig
    from pipeline.serve.app import run_endpoint, stop_endpoint

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows: list[dict] = []
    try:
        started = time.perf_counter()
        run_endpoint(ServeConfig(index=root, app_name="bench", route_prefix="/bench", poll_s=0,
                                 timeout_s=10.0, topology="embedded"))
        startup_s = round(time.perf_counter() - started, 1)
        print(f"endpoint up in {startup_s}s", flush=True)
        base = f"http://127.0.0.1:{port}/bench"
        load(base, queries, args.k, 1, 3.0, None, buckets)           # warm up

        def measure(sel: float | None, clients: int) -> None:
            flt = None if sel is None else bucket_filter(sel)
            row = {"selectivity": sel, "filter": flt, "clients": clients,
                   "allowed": None if flt is None else
                   int((buckets < flt["range"]["bucket"]["lt"]).sum())}
            if flt is not None and clients == 1:
                row["first_request_ms"] = first_request(base, queries[0], args.k, flt)
            row.update(load(base, queries, args.k, clients, args.duration_s, flt, buckets))
            row["load_avg"] = [round(x, 2) for x in os.getloadavg()]
            rows.append(row)
            print(json.dumps(row), flush=True)

        measure(None, 1)
        for sel in args.selectivities:
            measure(sel, 1)
        measure(None, 1)                                 # drift check: unfiltered again
        for sel in [None, *args.concurrent]:
            measure(sel, args.clients)
    finally:
        stop_endpoint("bench")
        serve.shutdown()
        ray.shutdown()
    return rows


# -- in process -----------------------------------------------------------------------------------
def run_in_process(root: str, buckets: np.ndarray, queries: list[str], args) -> list[dict]:
    from pipeline.encode.query import set_torch_threads
    from pipeline.search import ShardedIndex

    set_torch_threads(1)
    index = ShardedIndex.open(root)
    encoder = index.encoder()
    vectors = [encoder.encode_queries([q]) for q in queries]
    for v in vectors[:10]:                                   # warm up kernels
        index.search_rows(v, k=args.k, threads=1)
    rows = []
    for sel in [None, *args.selectivities]:
        flt = None if sel is None else bucket_filter(sel)
        limit = None if flt is None else flt["range"]["bucket"]["lt"]
        if flt is not None:
            t0 = time.perf_counter()
            index.allowed(flt)                                # the cache miss, timed apart
            mask_ms = round((time.perf_counter() - t0) * 1000, 3)
        total, search, bad = [], [], 0
        for q in queries:
            t0 = time.perf_counter()
            v = encoder.encode_queries([q])
            t1 = time.perf_counter()
            got, _ = index.search_rows(v, k=args.k, threads=1, filter=flt)
            t2 = time.perf_counter()
            total.append((t2 - t0) * 1000)
            search.append((t2 - t1) * 1000)
            if limit is not None:       # generation row i is document d{i} (contiguous shards)
                hit_rows = got[0][got[0] >= 0]
                bad += int((buckets[hit_rows] >= limit).sum())
        row = {"selectivity": sel, "filter": flt, **summary(total),
               "search_p50_ms": round(pct(search, 50), 3),
               "search_p95_ms": round(pct(search, 95), 3),
               "search_p99_ms": round(pct(search, 99), 3), "violations": bad,
               "mask_ms": None if flt is None else mask_ms}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("served", "in-process", "prepare"), default="served")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--n-postings", type=int, default=5000,
                        help="Blocked index n_postings of the whole index (1/S per shard); 0: "
                             "derived per shard.")
    parser.add_argument("--selectivities", default=",".join(str(s) for s in SELECTIVITIES))
    parser.add_argument("--concurrent", default="1,0.01",
                        help="Selectivities also measured with --clients concurrent clients.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--queries", type=Path,
                        default=Path("/work/shared/data/scifact/queries.jsonl"))
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lsr-bench-filters"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.selectivities = [float(s) for s in args.selectivities.split(",") if s]
    args.concurrent = [float(s) for s in args.concurrent.split(",") if s]

    report = {"command": " ".join([sys.executable, *sys.argv]),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "load_avg_start": list(os.getloadavg())}
    print(f"# {report['command']}\n# {report['date']}  {report['machine']}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    root, buckets = prepare_index(args.work, args.docs, args.seed, args.n_postings or None,
                                  args.shards)
    report["index"] = root
    if args.mode == "prepare":
        return
    queries = read_queries(args.queries, args.n_queries)
    run = run_served if args.mode == "served" else run_in_process
    report["rows"] = run(root, buckets, queries, args)
    report["load_avg_end"] = list(os.getloadavg())
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
