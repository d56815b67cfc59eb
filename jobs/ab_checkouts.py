"""A/B of the BlockedIndex across checkouts: the same timing run from each, alternating.

    flock /tmp/lsr-cpu.lock python jobs/ab_checkouts.py /tmp/base /work/main [--rounds 2]
        [--cache /work/cache] [--data ../shared/data] [--points d:d,6:0.8,10:1.0]

For a change that alters the index's arrays (its layout), `jobs/ab_kernels.py` cannot compare
two kernel files on one index. This script runs itself once per checkout per round, in a fresh
process importing that checkout's `pipeline` (so each builds its own index from the same
vectors), in the order A B A B ...: the box's drift falls on both sides alike. Each run builds
the defaults index of cisi, scifact, vaswani and their union (the cached real encodings, as in
`jobs/bench_index.py`) and reports per search point the mean over queries of each query's best
single-query time (3 passes, one thread) and the best of 3 batch calls on one thread, per query;
the last columns are the ratio to the first checkout, per round. It also hashes every query's
top 10 (ids and scores) at each point and says where a checkout's results differ from the
first checkout's.

A checkout is a directory holding `pipeline/`; `git worktree add /tmp/base <commit>` makes one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _measure(root: str, cache: str, data: str, points: list[tuple]) -> dict:
    """Runs inside the child process, with ``root`` first on sys.path."""
    import hashlib

    import numpy as np

    from jobs.bench_index import real_collections
    from pipeline.index.blocked import BlockedIndex
    import pipeline.index.blocked as blocked_module

    if not os.path.abspath(blocked_module.__file__).startswith(os.path.abspath(root)):
        raise SystemExit(f"imported {blocked_module.__file__}, not from {root}")
    out, digests = {}, {}
    for ds in real_collections("cisi,scifact,vaswani", cache, data, with_union=True):
        index = BlockedIndex.build(ds.docs)
        queries = ds.queries
        out[f"{ds.name} memory MB"] = index.nbytes / 1e6
        for qc, hf in points:
            ids, scores = index.search(queries, 10, query_cut=qc, heap_factor=hf, threads=1)
            label = f"{ds.name} qc={qc or 'd'} hf={hf or 'd'}"
            digests[label] = hashlib.sha256(ids.tobytes() + scores.tobytes()).hexdigest()[:16]
            best = np.full(queries.shape[0], np.inf)
            for _ in range(3):
                for i in range(queries.shape[0]):
                    t = time.perf_counter()
                    index.search(queries[i], 10, query_cut=qc, heap_factor=hf, threads=1)
                    best[i] = min(best[i], time.perf_counter() - t)
            batch = np.inf
            for _ in range(3):
                t = time.perf_counter()
                index.search(queries, 10, query_cut=qc, heap_factor=hf, threads=1)
                batch = min(batch, time.perf_counter() - t)
            out[f"{label} single us"] = float(best.mean() * 1e6)
            out[f"{label} batch1 us"] = float(batch / queries.shape[0] * 1e6)
    return {"times": out, "results": digests}


def _parse_points(text: str) -> list[tuple]:
    points = []
    for item in text.split(","):
        qc, hf = item.split(":")
        points.append((None if qc == "d" else int(qc), None if hf == "d" else float(hf)))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", help="checkouts to compare, the first is the base")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", default="/work/cache")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--points", default="d:d,6:0.8,10:1.0",
                        help="query_cut:heap_factor,... ('d' = the index's derived value)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(_measure(args.child, args.cache, args.data, _parse_points(args.points))))
        return
    if len(args.roots) < 2:
        parser.error("give at least two checkouts")
    roots = [os.path.abspath(r) for r in args.roots]
    runs: dict[str, list[dict]] = {r: [] for r in roots}
    for rnd in range(args.rounds):
        for root in roots:
            env = {**os.environ, "PYTHONPATH": root}
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", root, "--cache",
                 args.cache, "--data", os.path.abspath(args.data), "--points", args.points],
                env=env, cwd=root, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{root}: the timing run failed:\n{done.stderr[-3000:]}")
            runs[root].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {rnd + 1}: {root} done", flush=True)
    base = roots[0]
    # the top 10 of every query (ids and scores, hashed) at each point, against the base's
    results = {r: [run.pop("results") for run in runs[r]] for r in roots}
    for root in roots[1:]:
        differ = sorted({label for got in results[root] for label, digest in got.items()
                         if digest != results[base][0][label]})
        print(f"{os.path.basename(root) or root}: results "
              + ("identical to the base's at every point" if not differ
                 else "DIFFER at " + ", ".join(differ)))
    runs = {r: [run["times"] for run in runs[r]] for r in roots}
    keys = list(runs[base][0])
    print(f"{'measure':44s}" + "".join(f"{os.path.basename(r) or r:>22s}" for r in roots)
          + "   ratio to base per round")
    for key in keys:
        row = f"{key:44s}"
        for root in roots:
            row += f"{'/'.join(f'{run[key]:.1f}' for run in runs[root]):>22s}"
        for root in roots[1:]:
            ratios = [b[key] / a[key] for a, b in zip(runs[base], runs[root])]
            row += "   " + "/".join(f"{r:.3f}" for r in ratios)
        print(row)


if __name__ == "__main__":
    main()
