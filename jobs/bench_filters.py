"""Filtered search latency against selectivity, in process, on synthetic documents.

For each selectivity (fraction of the shard a uniformly random filter allows) it times, per
query on one thread (`threads=1`, the serving path), at the same k:
  unfiltered   BlockedIndex.search                       (the baseline)
  walk         BlockedIndex.search(allowed, exact_below=0)   blocks walked, others pre-visited
  allowed      BlockedIndex.search(allowed, exact_below=1)   exact scoring of only the allowed
                                                             documents via the forward index
  exact        ExactIndex.search(allowed)                    inverted lists, filter applied
and the recall@k of `walk` against `allowed` (which is exact over the allowed subset).
The crossover where `allowed` becomes cheaper than `walk` is what
`pipeline.index.config.FILTER_EXACT_FRACTION` records.

Example (under the shared CPU lock):
  flock /tmp/lsr-cpu.lock .venv/bin/python jobs/bench_filters.py --docs 100000 --queries 200

At 1M documents the derived n_postings (~37,000) does not fit this machine's memory while
building; pass --n-postings 5000 (as BENCHMARKS §14 does):
  flock /tmp/lsr-cpu.lock .venv/bin/python jobs/bench_filters.py --docs 1000000 --queries 100 \
      --repeat 1 --n-postings 5000 --no-exact \
      --selectivities 1,0.5,0.2,0.1,0.07,0.05,0.03,0.02,0.01,0.001
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

SELECTIVITIES = (1.0, 0.5, 0.1, 0.01, 0.001, 0.0001)


def _time_per_query(fn, queries, repeat: int) -> float:
    """Median over `repeat` passes of the mean time per query (µs), one query per call."""
    rows = [queries[i:i + 1] for i in range(queries.shape[0])]
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        for q in rows:
            fn(q)
        passes.append((time.perf_counter() - started) / len(rows) * 1e6)
    return float(np.median(passes))


def main() -> None:
    from pipeline.index import BlockedIndex, BlockedIndexConfig, ExactIndex, recall_at_k
    from pipeline.index.allowed import AllowedDocs
    from pipeline.testing.synthetic import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-postings", type=int, default=None,
                    help="Blocked index n_postings (default: derived from the shard).")
    ap.add_argument("--query-cut", type=int, default=None, help="Build-time query_cut default.")
    ap.add_argument("--heap-factor", type=float, default=None,
                    help="Build-time heap_factor default.")
    ap.add_argument("--selectivities", default=",".join(str(s) for s in SELECTIVITIES),
                    help="Comma-separated fractions of the shard a filter allows.")
    ap.add_argument("--no-exact", action="store_true", help="Skip the ExactIndex column.")
    ap.add_argument("--json", default=None, help="Also write the table as JSON here.")
    args = ap.parse_args()

    t0 = time.perf_counter()
    docs, queries = generate(args.docs, args.queries, args.seed)
    t1 = time.perf_counter()
    overrides = {"n_postings": args.n_postings, "query_cut": args.query_cut,
                 "heap_factor": args.heap_factor}
    config = BlockedIndexConfig(**{k: v for k, v in overrides.items() if v is not None})
    blocked = BlockedIndex.build(docs, config)
    t2 = time.perf_counter()
    exact = None if args.no_exact else ExactIndex(docs)
    print(f"# {args.docs} docs, {args.queries} queries, k={args.k}; generate {t1 - t0:.1f}s, "
          f"build {t2 - t1:.1f}s; config {blocked.config}")
    k = args.k
    rng = np.random.default_rng(args.seed + 1)
    warm = queries[:2]
    blocked.search(warm, k=k, threads=1)
    header = (f"{'selectivity':>11} {'allowed':>8} {'unfiltered_us':>13} {'walk_us':>9} "
              f"{'allowed_us':>10} {'exact_us':>9} {'walk_recall':>11}")
    print(header)
    table = []
    for sel in (float(s) for s in args.selectivities.split(",")):
        mask = rng.random(args.docs) < sel if sel < 1 else np.ones(args.docs, np.bool_)
        allowed = AllowedDocs(mask)
        # compile every path outside the clock
        blocked.search(warm, k=k, threads=1, allowed=allowed, exact_below=0.0)
        blocked.search(warm, k=k, threads=1, allowed=allowed, exact_below=1.0)
        unf = _time_per_query(lambda q: blocked.search(q, k=k, threads=1), queries, args.repeat)
        walk = _time_per_query(lambda q: blocked.search(q, k=k, threads=1, allowed=allowed,
                                                        exact_below=0.0), queries, args.repeat)
        sub = _time_per_query(lambda q: blocked.search(q, k=k, threads=1, allowed=allowed,
                                                       exact_below=1.0), queries, args.repeat)
        ex = float("nan")
        if exact is not None:
            exact.search(warm, k=k, threads=1, allowed=allowed)
            ex = _time_per_query(lambda q: exact.search(q, k=k, threads=1, allowed=allowed),
                                 queries, args.repeat)
        got, _ = blocked.search(queries, k=k, threads=1, allowed=allowed, exact_below=0.0)
        truth, _ = blocked.search(queries, k=k, threads=1, allowed=allowed, exact_below=1.0)
        rec = recall_at_k(got, truth)
        row = {"selectivity": sel, "allowed": allowed.count, "unfiltered_us": unf,
               "walk_us": walk, "allowed_us": sub, "exact_us": ex, "walk_recall": rec}
        table.append(row)
        print(f"{sel:>11.4%} {allowed.count:>8d} {unf:>13.0f} {walk:>9.0f} {sub:>10.0f} "
              f"{ex:>9.0f} {rec:>11.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"docs": args.docs, "queries": args.queries, "k": k, "repeat": args.repeat,
                       "config": blocked.config.to_dict(), "build_s": t2 - t1,
                       "load_avg_end": list(os.getloadavg()), "rows": table}, f, indent=2)


if __name__ == "__main__":
    main()
