"""Benchmark of the resume scan: how long a resumed run takes to find which of its shards an
earlier attempt committed, on a root with many small committed shards.

    python jobs/bench_resume_scan.py [--shards 2000] [--docs-per-shard 20] [--json]

"before": the scan as it was, on the driver, one shard after another, reading each shard's
whole postings group to verify its checksum (`verify_shard` in a loop). "after": the same
checks as one Ray task per shard (`committed_shards`), which is what a resumed job runs now.
Both check the same records and return the same answer; the root is built once with the
job's own shard writer. Prints the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.testing.machine import machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2000)
    parser.add_argument("--docs-per-shard", type=int, default=20)
    parser.add_argument("--output", default=None, help="Index root (default: a temporary directory, removed).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import numpy as np
    import ray
    import scipy.sparse as sp

    from pipeline.batch.shard_writer import committed_record, committed_shards, verify_shard, write_shard
    from pipeline.catalog import IndexLayout, shard_name
    from pipeline.format.postings import ShardPostings

    root = args.output or tempfile.mkdtemp(prefix="bench-resume-")
    layout = IndexLayout.at(os.path.join(root, "idx"))
    rng = np.random.default_rng(0)
    names = [shard_name(1, s) for s in range(args.shards)]
    started = time.perf_counter()
    for s, name in enumerate(names):
        m = sp.random(args.docs_per_shard, 30522, density=100 / 30522, format="csr", dtype=np.float32,
                      random_state=rng)
        m.data = np.abs(m.data) + 0.01
        postings = ShardPostings(np.asarray([f"d{s}-{i}" for i in range(args.docs_per_shard)], dtype=object),
                                 np.arange(args.docs_per_shard, dtype=np.uint64), m)
        write_shard(layout, name, postings, index_kind="exact", index_params={}, values_dtype="float32",
                    record={"plan_id": "bench", "shard": s}, threads=1)
    build_s = time.perf_counter() - started

    # Before: serial, on the driver.
    started = time.perf_counter()
    before = []
    for s, name in enumerate(names):
        record = committed_record(layout, name, {"plan_id": "bench", "shard": s}, verify=False)
        before.append(record if record and verify_shard(layout, name, record) else None)
    before_s = time.perf_counter() - started

    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    committed_shards(layout, [(names[0], {"plan_id": "bench", "shard": 0})])   # workers warm
    started = time.perf_counter()
    after = committed_shards(layout, [(name, {"plan_id": "bench", "shard": s}) for s, name in enumerate(names)])
    after_s = time.perf_counter() - started
    cpus = ray.cluster_resources().get("CPU")
    ray.shutdown()
    assert [r is not None for r in before] == [r is not None for r in after] and all(after)

    result = {"shards": args.shards, "docs_per_shard": args.docs_per_shard, "build_s": round(build_s, 1),
              "before_serial_driver_s": round(before_s, 2), "after_ray_tasks_s": round(after_s, 2),
              "ray_cpus": cpus, "speedup": round(before_s / after_s, 2) if after_s else None,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": machine_line()}
    if not args.output:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else
          "\n".join(f"{k:<24} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
