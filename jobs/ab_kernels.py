"""Interleaved A/B timing of variants of the blocked index's search kernels, on one index.

    flock /tmp/lsr-cpu.lock python jobs/ab_kernels.py --only union \
        [--build '{"n_postings": 171}'] [--query-cut 8] [--heap-factor 0.8] \
        pipeline/index/search_kernels.py /tmp/variant.py [more variants] [--rounds 5]

Each variant is a copy of `pipeline/index/search_kernels.py` with one change. All of them
are loaded side by side (numba's on-disk cache is left off for the copies), searched on
the same index with the same scratch sizes, and timed query by query, alternating the
order from one query to the next: on this shared box a configuration timed a minute
later can read 30% faster or slower (BENCHMARKS.md §7), so only alternating timings can
tell a 5% change. Reported per variant: the mean over queries of each query's best time
over ``--rounds`` passes, its ratio to the first variant, and whether its top-k rows are
identical to the first's. List the first file twice to see the harness's own spread.

Calls go through `FastCall`: the dispatcher resolves a namedtuple argument of a module
loaded a second time far more slowly than the first (measured: 847 against 171 µs a cisi
query for two copies of the same file), which would swamp any kernel difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.bench_index import real_collections  # noqa: E402
from pipeline.index import BlockedIndex  # noqa: E402
from pipeline.index.fastcall import FastCall  # noqa: E402
from pipeline.index.topk import empty_results  # noqa: E402
from pipeline.testing.machine import machine_line  # noqa: E402


def load_variant(path: str, slot: int, scratch_dir: str):
    """Import ``path`` as its own module, with ``cache=True`` removed (every copy compiles
    for itself; on-disk cache entries are keyed by file and would collide)."""
    with open(path) as f:
        source = re.sub(r"cache=True,?\s*", "", f.read())
    copy = os.path.join(scratch_dir, f"variant_{slot}.py")
    with open(copy, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"variant_{slot}", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="kernel module files; the first is the base")
    parser.add_argument("--real", default="cisi,scifact,vaswani")
    parser.add_argument("--only", default="union", help="the collection to time")
    parser.add_argument("--cache", default="/work/cache")
    parser.add_argument("--build", default="{}", help="BlockedIndexConfig overrides, JSON")
    parser.add_argument("--query-cut", type=int, default=None)
    parser.add_argument("--heap-factor", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {machine_line()}", flush=True)
    datasets = real_collections(args.real, args.cache, "", True)
    matches = [d for d in datasets if d.name == args.only]
    if not matches:
        raise SystemExit(f"--only {args.only!r}: not one of {[d.name for d in datasets]}")
    ds = matches[0]
    index = BlockedIndex.build(ds.docs, **json.loads(args.build))
    query_cut = args.query_cut or index.config.query_cut
    heap_factor = index.config.heap_factor if args.heap_factor is None else args.heap_factor
    q = ds.queries
    nq = q.shape[0]
    q_indptr = q.indptr.astype(np.int64)
    no_filter = np.zeros(0, np.uint64)
    with tempfile.TemporaryDirectory() as scratch_dir:
        modules = [load_variant(p, i, scratch_dir) for i, p in enumerate(args.variants)]
        scratches = [m.alloc_scratch(index.vocab_size, index.n_docs,
                                     query_cut * index._max_list_blocks, 10, query_cut)  # noqa: SLF001
                     for m in modules]
        calls = [FastCall(m.search_serial) for m in modules]
        rows = []
        for call, scratch in zip(calls, scratches):
            docs, scores = empty_results(nq, 10)
            call("all", index._view, q_indptr, q.indices, q.data, query_cut,  # noqa: SLF001
                 heap_factor, scratch, docs, scores, no_filter)
            rows.append(docs)
        best = np.full((len(modules), nq), np.inf)
        docs, scores = empty_results(1, 10)
        for r in range(args.rounds):
            for i in range(nq):
                one = q_indptr[i:i + 2]
                order = range(len(modules)) if (i + r) % 2 == 0 else reversed(range(len(modules)))
                for k in order:
                    started = time.perf_counter()
                    calls[k]("one", index._view, one, q.indices, q.data,  # noqa: SLF001
                             query_cut, heap_factor, scratches[k], docs, scores, no_filter)
                    best[k, i] = min(best[k, i], time.perf_counter() - started)
    print(f"{ds.name}: {nq} queries, {index.config.n_postings} postings/list, query_cut "
          f"{query_cut}, heap_factor {heap_factor}, best of {args.rounds} alternating passes")
    for k, path in enumerate(args.variants):
        print(f"  {path}: {best[k].mean() * 1e6:.1f} us a query, "
              f"{best[k].mean() / best[0].mean():.3f} x the first; top-k identical to the "
              f"first: {np.array_equal(rows[k], rows[0])}")


if __name__ == "__main__":
    main()
