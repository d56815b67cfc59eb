"""Time split of `BlockedIndex`'s single-thread batch path at its derived defaults, measured
(not estimated): the same composable kernels as `search_query`, run up to a given step.

    flock /tmp/lsr-cpu.lock python jobs/index_split.py [--real cisi,scifact,vaswani] [--union]

Per collection: batch1 µs/query of (1) cut terms + dense query, (2) + summary scores,
(3) + block ordering, (4) the whole search (block pops, document scoring, results); and the
counts behind them: candidate blocks, documents scored, forward-index entries read per query.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipeline.index.search_kernels as sk  # noqa: E402
from jobs.bench_index import real_collections  # noqa: E402
from pipeline.index import BlockedIndex  # noqa: E402
from pipeline.index.topk import empty_results, heap_to_row  # noqa: E402


@njit(cache=True, nogil=True)
def _run(ix, doc_start, q_indptr, q_indices, q_data, query_cut, heap_factor, sc, upto,
         counts, out_docs, out_scores):
    """`search_query` (unfiltered) on each query, stopped after step ``upto`` (1..4, see the
    module docstring); ``counts`` (3,) adds candidate blocks, documents scored and
    forward-index entries read."""
    for qi in range(q_indptr.size - 1):
        a, b = q_indptr[qi], q_indptr[qi + 1]
        q_terms, q_values = q_indices[a:b], q_data[a:b]
        nt = q_terms.size
        for i in range(nt):
            sc.q_dense[q_terms[i]] = q_values[i] * ix.q_scale
            sc.q_weight[q_terms[i]] = q_values[i]
        n_cut = sk.select_cut_terms(q_values, query_cut, sc.cut)
        n_touched = 0
        if upto >= 2:
            n_cand = sk.score_summaries(ix, q_terms, q_values, sc.q_weight, sc.cut, n_cut,
                                        sc.cand_block, sc.acc_code, sc.acc_q, sc.dots)
            counts[0] += n_cand
            if upto >= 3:
                sk.order_blocks(sc.dots, sc.heap, n_cand)
                if upto >= 4:
                    size, n_touched = sk.score_blocks(ix, heap_factor, n_cand, sc)
                    counts[1] += n_touched
                    for j in range(n_touched):
                        counts[2] += np.int64(ix.words[doc_start[sc.touched[j]] + 1])
                    heap_to_row(sc.h_scores, sc.h_docs, size, out_docs[qi], out_scores[qi])
        for i in range(nt):
            sc.q_dense[q_terms[i]] = 0.0
            sc.q_weight[q_terms[i]] = 0.0
        for j in range(n_touched):
            sc.visited[sc.touched[j] >> 6] = 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", default="cisi,scifact,vaswani")
    parser.add_argument("--union", action="store_true")
    parser.add_argument("--cache", default="/work/cache")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="collections to time (default: all)")
    args = parser.parse_args()
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}  load "
          f"{os.getloadavg()[0]:.2f}")
    for ds in real_collections(args.real, args.cache, "", args.union, args.only):
        index = BlockedIndex.build(ds.docs)
        cfg = index.config
        q = ds.queries
        q_indptr = q.indptr.astype(np.int64)
        nq = q.shape[0]
        n_cand = cfg.query_cut * index._max_list_blocks
        sc = index._scratch(n_cand, cfg.query_cut, 10)
        doc_start = index._forward_starts()
        out_docs, out_scores = empty_results(nq, 10)
        times = []
        for upto in (1, 2, 3, 4):
            best = np.inf
            for _ in range(args.rounds):
                counts = np.zeros(3, np.int64)
                t = time.perf_counter()
                _run(index._view, doc_start, q_indptr, q.indices, q.data, cfg.query_cut,
                     cfg.heap_factor, sc, upto, counts, out_docs, out_scores)
                best = min(best, time.perf_counter() - t)
            times.append(best / nq * 1e6)
        c = counts / nq
        steps = np.diff([0.0] + times)
        print(f"{ds.name}: batch1 {times[-1]:.0f} us/query = dense query+cut {steps[0]:.0f} + "
              f"summaries {steps[1]:.0f} + block order {steps[2]:.0f} + block pops/doc "
              f"scoring/results {steps[3]:.0f}; per query: {c[0]:.0f} candidate blocks, "
              f"{c[1]:.0f} docs scored, {c[2]:.0f} forward entries read; "
              f"n_postings={cfg.n_postings} query_cut={cfg.query_cut} "
              f"heap_factor={cfg.heap_factor}", flush=True)


if __name__ == "__main__":
    main()
