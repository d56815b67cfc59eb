"""Peak memory of the re-index base-table step: the driver, and the largest Ray worker.

Writes a synthetic base generation of N ids (shards holding ids and fingerprints, empty
vectors: all the step reads), then, in a local Ray with the given CPUs, runs the step and
`--lookups` lookup tasks of `--keys` known ids each (what `classify_batch` does per block),
sampling the resident memory of the driver and of every Ray worker it started every 50 ms.

Works on both designs of `pipeline.batch.reindex_diff`: the broadcast `load_base_table`
(older commits: sorted table on the driver, `ray.put` whole, fetched by every task) and the
partitioned `load_base_partitions` (lookup actors, one per id-hash range). Run it with
PYTHONPATH pointing at the checkout to measure.

    flock /tmp/lsr-cpu.lock .venv/bin/python jobs/bench_base_table.py --docs 2000000
    flock /tmp/lsr-cpu.lock .venv/bin/python jobs/bench_base_table.py --docs 2000000 --partition-mb 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import scipy.sparse as sp

MB = 1 << 20


def write_base(root: str, n_docs: int, n_shards: int):
    from pipeline.catalog import IndexLayout, Manifest, ShardEntry
    from pipeline.format import ShardPostings
    from pipeline.format.postings import write_postings

    layout = IndexLayout.at(root)
    entries = []
    for s, (lo, hi) in enumerate(zip(*(lambda b: (b[:-1], b[1:]))(np.linspace(0, n_docs, n_shards + 1)
                                                                   .astype(np.int64)))):
        name = f"g000001-s{s:05d}"
        ids = np.asarray([f"doc-{i:012d}" for i in range(lo, hi)], dtype=object)
        write_postings(layout.postings(name),
                       ShardPostings(doc_ids=ids, fingerprints=np.arange(lo, hi, dtype=np.uint64),
                                     vectors=sp.csr_matrix((hi - lo, 8), dtype=np.float32)),
                       values_dtype="float32")
        entries.append(ShardEntry(name, int(hi - lo), 0, "c" * 64, "exact"))
    return layout, Manifest(generation=1, created_at="2026-01-01T00:00:00+00:00", encoder={},
                            index={"kind": "exact", "params": {}}, shards=entries, corpus={}, counts={})


class Sampler:
    """Peak RSS (and RSS less shared pages) of this process and of its Ray worker descendants."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.base = self.me.memory_info().rss
        self.peaks: dict[int, dict] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, proc: psutil.Process, name: str) -> None:
        try:
            m = proc.memory_info()
        except psutil.Error:
            return
        peak = self.peaks.setdefault(proc.pid, {"name": name, "rss": 0, "private": 0})
        peak["rss"] = max(peak["rss"], m.rss)
        peak["private"] = max(peak["private"], m.rss - m.shared)
        if name.startswith("ray::") and name != "ray::IDLE":
            peak["name"] = name

    def _run(self) -> None:
        while not self.stop.is_set():
            self._sample(self.me, "driver")
            for child in self.me.children(recursive=True):
                try:
                    cmd = child.cmdline()
                except psutil.Error:
                    continue
                if cmd and cmd[0].startswith("ray::"):
                    self._sample(child, cmd[0].split()[0])
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--lookups", type=int, default=4)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--partition-mb", type=float, default=None,
                    help="target partition size (partitioned design; default: the module's)")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    import ray

    from pipeline.batch import reindex_diff as rd

    partitioned = hasattr(rd, "load_base_partitions")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        layout, base = write_base(os.path.join(tmp, "idx"), args.docs, args.shards)
        write_s = time.perf_counter() - t0
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                 object_store_memory=2 << 30, log_to_driver=False, configure_logging=False)
        rng = np.random.default_rng(0)
        queries = [[f"doc-{i:012d}" for i in rng.integers(0, args.docs, args.keys)]
                   for _ in range(args.lookups)]

        @ray.remote(num_cpus=0.25)
        def lookup_task(table, ids) -> int:
            # (the broadcast table arrives resolved: Ray fetches a top-level ref argument)
            hits = rd.lookup_base(table, ids) if partitioned else table.lookup(rd.id_keys(ids))
            return int(np.sum(hits.found)) if partitioned else int(np.sum(hits >= 0))

        with Sampler() as sampler:
            t0 = time.perf_counter()
            if partitioned:
                kwargs = {} if args.partition_mb is None else {"partition_bytes": int(args.partition_mb * MB)}
                table = rd.load_base_partitions(layout, base, **kwargs)
                n_parts = len(table.actors)
            else:
                table = ray.put(rd.load_base_table(layout, base))
                n_parts = 1
            load_s = time.perf_counter() - t0
            found = ray.get([lookup_task.remote(table, ids) for ids in queries])
            step_s = time.perf_counter() - t0
            time.sleep(0.2)
            if partitioned:
                table.close()
        ray.shutdown()
    assert found == [args.keys] * args.lookups, found
    workers = sorted((p for pid, p in sampler.peaks.items() if pid != sampler.me.pid),
                     key=lambda p: -p["rss"])
    driver = sampler.peaks[sampler.me.pid]
    print(json.dumps({
        "design": "partitioned" if partitioned else "broadcast", "docs": args.docs,
        "shards": args.shards, "partitions": n_parts, "table_mb": round(args.docs * 32 / MB, 1),
        "write_base_s": round(write_s, 1), "load_s": round(load_s, 2), "step_s": round(step_s, 2),
        "driver_peak_rss_growth_mb": round((driver["rss"] - sampler.base) / MB, 1),
        "largest_worker": {"name": workers[0]["name"], "rss_mb": round(workers[0]["rss"] / MB, 1),
                           "rss_less_shared_mb": round(max(w["private"] for w in workers) / MB, 1)},
        "workers": [{"name": w["name"], "rss_mb": round(w["rss"] / MB, 1),
                     "rss_less_shared_mb": round(w["private"] / MB, 1)} for w in workers[:8]],
    }, indent=1))


if __name__ == "__main__":
    main()
