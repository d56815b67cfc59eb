"""Recall and work counts of `BlockedIndex` over a grid of builds and searches: the
noise-free half of tuning its parameters.

    python jobs/index_sweep.py [--real cisi,scifact,vaswani] [--union] [--only union]
        [--builds 2.5:0.1:0.4,1.2:0.3:0.5] [--searches 6:0.8,8:0.8,10:0.8]
        [--seismic-recall] [--out bench-results/index-sweep]

On a shared box single-thread timings drift by up to 30% between runs (BENCHMARKS.md §7);
what a query *does* does not. Per (build, search) this prints recall@10 against exact search
and, per query, the work behind its latency, counted by the search kernels themselves
(`jobs.index_split`): candidate blocks (summary scoring), documents scored and forward-index
entries read (document scoring, 60-80% of a query's time). Also per build: memory and
build seconds (``--threads``, default 1, for both libraries); per point the single-thread
time of the counting pass (which also reads each scored document's length), for orientation
only: compare configurations with `jobs/bench_index.py`'s interleaved timing, not with it.

Builds are ``multiple:centroid_fraction:summary_energy``: ``n_postings`` = multiple x the
mean length of the non-empty posting lists (the unit of the derived rule,
`BlockedIndexConfig.derived_for`); ``d`` in any field keeps the derived value. Searches are
``query_cut:heap_factor``; ``d:d`` is the build's derived search point.

``--seismic-recall`` also builds pyseismic-lsr at the same parameters and reports its
recall@10 at each search point (one thread; recall only, which is deterministic): where the
two libraries reach different recall at equal parameters, their blocks or summaries differ.
With ``--time-queries N`` it also times both libraries' single-query calls at each point,
interleaved query by query over the first N queries (best of ``--rounds`` passes), so that
the two see the same state of a drifting box.

``--synthetic N`` sweeps N synthetic documents (`pipeline.testing.synthetic.generate`)
before the real collections (``--real ""`` for none).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.bench_index import (Dataset, SeismicQueries, interleaved,  # noqa: E402
                              real_collections, rows_of, seismic_index, set_seismic_threads)
from jobs.index_split import _run  # noqa: E402
from pipeline.index import BlockedIndex, ExactIndex, recall_at_k  # noqa: E402
from pipeline.index.blocked import used_terms  # noqa: E402
from pipeline.index.fastcall import numba_threads  # noqa: E402
from pipeline.index.topk import empty_results  # noqa: E402
from pipeline.testing.machine import machine_line  # noqa: E402

K = 10


def parse_items(spec: str, flag: str, fields: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``a:b,c:d`` -> [(a, b), (c, d)], each item with exactly ``len(fields)`` parts."""
    out = []
    for item in spec.split(","):
        parts = tuple(item.split(":"))
        if len(parts) != len(fields):
            raise SystemExit(f"{flag}: {item!r} is not {':'.join(fields)}")
        out.append(parts)
    return out


def build_overrides(docs, build: tuple[str, str, str]) -> dict:
    """Explicit `BlockedIndexConfig` fields for one ``--builds`` item."""
    multiple, fraction, energy = build
    out: dict = {}
    if multiple != "d":
        out["n_postings"] = max(1, round(float(multiple) * docs.nnz / max(1, used_terms(docs))))
    if fraction != "d":
        out["centroid_fraction"] = float(fraction)
    if energy != "d":
        out["summary_energy"] = float(energy)
    return out


def counted_search(index: BlockedIndex, queries, query_cut: int, heap_factor: float
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-k rows of every query, the per-query means of (candidate blocks, documents
    scored, forward entries read), and the batch's seconds (one thread, the kernels of
    `search_query` run step by step)."""
    q_indptr = queries.indptr.astype(np.int64)
    nq = queries.shape[0]
    scratch = index._scratch(query_cut * index._max_list_blocks, query_cut, K)  # noqa: SLF001
    doc_start = index._forward_starts()                                        # noqa: SLF001
    out_docs, out_scores = empty_results(nq, K)
    counts = np.zeros(3, np.int64)
    args = (index._view, doc_start, q_indptr, queries.indices, queries.data,   # noqa: SLF001
            query_cut, heap_factor, scratch, 4)
    _run(*args, np.zeros(3, np.int64), out_docs, out_scores)                  # compile, warm
    started = time.perf_counter()
    _run(*args, counts, out_docs, out_scores)
    seconds = time.perf_counter() - started
    return out_docs, counts / max(1, nq), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", default="cisi,scifact,vaswani")
    parser.add_argument("--union", action="store_true")
    parser.add_argument("--only", default="", help="collections to sweep (default: all)")
    parser.add_argument("--cache", default="/work/cache")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data"))
    parser.add_argument("--builds", default="d:d:d")
    parser.add_argument("--searches", default="d:d")
    parser.add_argument("--seismic-recall", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of both libraries' builds (searches run on one)")
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic documents (0: none)")
    parser.add_argument("--synthetic-queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-queries", type=int, default=0,
                        help="with --seismic-recall: interleaved single-query times of both "
                             "libraries over this many queries (0: none)")
    parser.add_argument("--rounds", type=int, default=2, help="passes of --time-queries")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.time_queries and not args.seismic_recall:
        raise SystemExit("--time-queries needs --seismic-recall")
    set_seismic_threads(args.threads)
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {machine_line()}")
    print(f"date:    {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}  "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    datasets = real_collections(args.real, args.cache, os.path.normpath(args.data),
                                args.union, args.only)
    if args.synthetic:
        from pipeline.testing import synthetic

        docs, queries = synthetic.generate(args.synthetic, args.synthetic_queries, args.seed)
        datasets.insert(0, Dataset(f"synthetic-{args.synthetic // 1000}k", docs, queries,
                                   f"pipeline.testing.synthetic.generate(seed={args.seed})", ""))
    builds = parse_items(args.builds, "--builds", ("multiple", "centroid_fraction", "energy"))
    searches = parse_items(args.searches, "--searches", ("query_cut", "heap_factor"))
    rows = []
    for ds in datasets:
        truth, _ = ExactIndex(ds.docs).search(ds.queries, k=K)
        n_timed = min(args.time_queries, ds.queries.shape[0])
        timed_rows = rows_of(ds.queries[:n_timed])       # split once, timed at every point
        for build in builds:
            overrides = build_overrides(ds.docs, build)
            started = time.perf_counter()
            with numba_threads(args.threads):
                index = BlockedIndex.build(ds.docs, **overrides)
            build_s = time.perf_counter() - started
            cfg = index.config
            seismic = None
            if args.seismic_recall:
                sindex, seismic_build_s, seismic_mem = seismic_index(ds, {
                    "n_postings": cfg.n_postings, "centroid_fraction": cfg.centroid_fraction,
                    "summary_energy": cfg.summary_energy, "max_fraction": cfg.max_fraction}, args.threads)
                seismic = (SeismicQueries(sindex, ds.queries, K), seismic_build_s, seismic_mem)
            for qc_spec, hf_spec in searches:
                query_cut = cfg.query_cut if qc_spec == "d" else int(qc_spec)
                heap_factor = cfg.heap_factor if hf_spec == "d" else float(hf_spec)
                got, per_query, seconds = counted_search(index, ds.queries, query_cut,
                                                         heap_factor)
                row = {"dataset": ds.name, "n_postings": cfg.n_postings,
                       "centroid_fraction": cfg.centroid_fraction,
                       "summary_energy": cfg.summary_energy, "query_cut": query_cut,
                       "heap_factor": heap_factor, "recall": recall_at_k(got, truth),
                       "blocks": float(per_query[0]), "docs": float(per_query[1]),
                       "entries": float(per_query[2]), "memory": index.nbytes,
                       "build_s": build_s,
                       "batch1_us": seconds / ds.queries.shape[0] * 1e6}
                line = (f"{ds.name} n_postings={cfg.n_postings} cf={cfg.centroid_fraction:.2f} "
                        f"energy={cfg.summary_energy} qc={query_cut} hf={heap_factor}: "
                        f"R@10 {row['recall']:.3f}  blocks {row['blocks']:.0f}  docs "
                        f"{row['docs']:.0f}  entries {row['entries']:.0f}  mem "
                        f"{index.nbytes / 1e6:.1f} MB  build {build_s:.1f} s  (counting pass "
                        f"{row['batch1_us']:.0f} us)")
                if seismic is not None:
                    sq, seismic_build_s, seismic_mem = seismic
                    search = {"query_cut": query_cut, "heap_factor": heap_factor}
                    row["seismic_recall"] = recall_at_k(
                        sq.batch(search, ds.queries.shape[0], 1), truth)
                    row["seismic_memory"] = seismic_mem
                    row["seismic_build_s"] = seismic_build_s
                    line += (f"  | seismic R@10 {row['seismic_recall']:.3f} mem "
                             f"{seismic_mem / 1e6:.1f} MB build {seismic_build_s:.1f} s")
                    if args.time_queries:
                        mine, theirs = interleaved(
                            [lambda i: index.search(timed_rows[i], k=K, query_cut=query_cut,
                                                    heap_factor=heap_factor),
                             lambda i: sq.one(i, search)], n_timed, args.rounds)
                        row["ours_us"], row["seismic_us"] = float(mine.mean()), float(theirs.mean())
                        line += (f"  | interleaved us: ours {row['ours_us']:.0f} seismic "
                                 f"{row['seismic_us']:.0f} ({row['ours_us'] / row['seismic_us']:.2f})")
                print(line, flush=True)
                rows.append(row)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "index_sweep.json"), "w") as f:
            json.dump({"command": sys.argv, "machine": machine_line(), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
