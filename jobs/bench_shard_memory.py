"""Peak memory of assembling one shard (the commit phase's per-shard task), in one process.

    flock /tmp/lsr-cpu.lock python jobs/bench_shard_memory.py --docs 100000 --work /tmp/lsr-shardmem

Stages N synthetic documents (`pipeline.testing.synthetic`, seed 0) exactly as the job's
staging sink leaves them (Parquet parts of `--part-rows` rows with the staged columns,
and the unit's read summary), then, in a fresh subprocess, runs the commit task's
function (`pipeline.batch.commit._assemble_shard`, without Ray) on that unit and reports
the process's peak resident memory above what it held before the call (Linux VmHWM, reset
through /proc/self/clear_refs), and the resident memory sampled around each step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _plan(work: str, n_docs: int, part_rows: int):
    from pipeline.batch.plan import JobPlan, ShardPlan
    from pipeline.catalog import IndexLayout, shard_name
    from pipeline.data.corpus import Chunk, CorpusFile

    layout = IndexLayout.at(os.path.join(work, "index"))
    f = CorpusFile(url="synthetic.parquet", format="parquet", size=0, version="0")
    plan = JobPlan(plan_id="shardmem", generation=1, parent_generation=None,
                   corpus_fingerprint="synthetic", files=[f],
                   shards=[ShardPlan(0, shard_name(1, 0), Chunk(f, 0, n_docs))],
                   block_rows=part_rows)
    return plan, layout


def stage(work: str, n_docs: int, part_rows: int) -> None:
    """Write the unit's staged parts and read summary (skipped when already there)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.batch.staging import part_name, parts_loc, read_loc
    from pipeline.objstore import exists, write_bytes_atomic, write_json_atomic
    from pipeline.testing import synthetic

    plan, layout = _plan(work, n_docs, part_rows)
    if exists(read_loc(plan, layout, 0)):
        return
    docs, _ = synthetic.generate(n_docs, 0, 0)
    for seq, lo in enumerate(range(0, n_docs, part_rows)):
        part = docs[lo:lo + part_rows]
        offsets = pa.array(part.indptr.astype(np.int64) - part.indptr[0], pa.int64())
        n = part.shape[0]
        table = pa.table({
            "row": pa.array(np.arange(lo, lo + n, dtype=np.int64)),
            "doc_id": pa.array([f"d{lo + i}" for i in range(n)], pa.string()),
            "fingerprint": pa.array(np.arange(lo, lo + n, dtype=np.uint64) * 2654435761),
            "indices": pa.LargeListArray.from_arrays(offsets, pa.array(part.indices, pa.int32())),
            "values": pa.LargeListArray.from_arrays(offsets, pa.array(part.data, pa.float32())),
            "encoded": pa.array(np.ones(n, bool)),
        })
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        write_bytes_atomic(parts_loc(plan, layout, 0).child(part_name(seq, lo, n)),
                           buf.getvalue())
    write_json_atomic(read_loc(plan, layout, 0),
                      {"n_records": n_docs, "n_valid": n_docs, "n_rejected": 0})


def measure(work: str, n_docs: int, part_rows: int, threads: int) -> dict:
    """Run the commit task's function once; its peak RSS and a trace around each step."""
    import numpy as np  # noqa: F401  (imported before the baseline, as in a Ray worker)
    import pyarrow  # noqa: F401
    import zarr  # noqa: F401

    import pipeline.batch.commit as commit
    import pipeline.batch.shard_writer as shard_writer
    import pipeline.format.postings as postings_mod
    import pipeline.index  # noqa: F401
    from pipeline.catalog import IndexLayout  # noqa: F401
    from pipeline.objstore import remove

    plan, layout = _plan(work, n_docs, part_rows)
    remove(layout.shards())
    trace: list[tuple[str, float, float]] = []
    peak = {"mb": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["mb"] = max(peak["mb"], _rss_mb())
            time.sleep(0.005)

    def wrap(mod, name):
        fn = getattr(mod, name)

        def inner(*a, **k):
            trace.append((f"{name} start", _rss_mb(), peak["mb"]))
            out = fn(*a, **k)
            trace.append((f"{name} end", _rss_mb(), peak["mb"]))
            return out
        setattr(mod, name, inner)

    for mod, name in ((commit, "read_staged_unit"), (commit, "staged_postings"),
                      (shard_writer, "write_postings"), (shard_writer, "build_index"),
                      (shard_writer, "save_index")):
        if hasattr(mod, name):
            wrap(mod, name)
    del postings_mod
    # load (or compile) the build's numba kernels before the baseline, as a worker that has
    # built a shard before has them: the measurement is the shard's data, not the compiler
    from pipeline.index import BlockedIndex
    from pipeline.testing import synthetic

    BlockedIndex.build(synthetic.generate(2000, 0, 1)[0]).search(
        synthetic.generate(10, 5, 2)[1], k=10)
    base = _rss_mb()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    started = time.perf_counter()
    result = commit._assemble_shard._function(plan, layout, 0, [], "blocked", {}, "float16",
                                              30522, threads, ())
    wall = time.perf_counter() - started
    stop.set()
    t.join()
    hwm = _rss_mb("VmHWM")
    return {"n_docs": n_docs, "nnz": result.entry.nnz, "baseline_mb": base, "peak_mb": hwm,
            "peak_above_baseline_mb": hwm - base,
            "bytes_per_posting_at_peak": (hwm - base) * 2**20 / result.entry.nnz,
            "wall_s": wall, "build_s": result.build_s, "write_s": result.write_s,
            "trace": [{"step": s, "rss_mb": r, "peak_so_far_mb": p} for s, r, p in trace]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--part-rows", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="numba threads of the build")
    parser.add_argument("--work", default="/tmp/lsr-shardmem")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.work, args.docs, args.part_rows, args.threads)))
        return
    from pipeline.testing.machine import describe_machine, machine_line

    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine: {machine_line(describe_machine())}")
    print(f"date:    {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"load:    {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    stage(args.work, args.docs, args.part_rows)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                          "--docs", str(args.docs), "--part-rows", str(args.part_rows),
                          "--threads", str(args.threads), "--work", args.work],
                         check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for step in res["trace"]:
        print(f"  {step['step']:24s} rss {step['rss_mb']:8.0f} MB  peak so far "
              f"{step['peak_so_far_mb']:8.0f} MB")
    print(f"{res['n_docs']} docs, {res['nnz']} postings: peak RSS {res['peak_mb']:.0f} MB, "
          f"{res['peak_above_baseline_mb']:.0f} MB above the {res['baseline_mb']:.0f} MB "
          f"before the call ({res['bytes_per_posting_at_peak']:.0f} bytes per posting); "
          f"wall {res['wall_s']:.1f} s (write {res['write_s']:.1f}, build {res['build_s']:.1f})")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
