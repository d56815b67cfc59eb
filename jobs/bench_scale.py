"""Scale harness of the batch path: the real indexing job on N synthetic pre-encoded documents.

    python jobs/bench_scale.py --docs 100000,1000000 [--work /tmp/lsr-scale] [--shard-size 250000]
                               [--clients 1,8] [--duration-s 10] [--out bench-results/scale.json]

For each N:

1. The corpus: N documents from the calibrated generator (`pipeline.testing.synthetic`), as
   Parquet files of `FILE_DOCS` documents (columns ``id``, ``indices`` list<int32>,
   ``values`` list<float32>), drawn `GEN_DOCS` at a time from one generator model
   (`synthetic.SyntheticCorpus`: every chunk shares the term map and the topics), so memory
   stays bounded at any N; then `N_SYNTH_QUERIES` queries of the same model, saved beside
   the corpus. Cached under --work (not part of the timings), keyed on the generator's
   parameters and the file layout.
2. The job: ``lsr index CORPUS OUT --format vectors --vector-keys ids --model splade-tiny
   --json`` as a subprocess, on a Ray head started here (`ray start --head` in a session of
   its own, stopped by its process group at the end), so that while it runs this script
   samples, every `SAMPLE_S`:
   * the RSS of the job's driver (the `lsr` process) and of every other process of the Ray
     session (workers, raylet, GCS): the peak of the driver and of the largest worker;
   * the object store: ``Plasma memory usage`` (peak) and ``Spilled`` bytes, from Ray's own
     memory summary (what ``ray memory --stats-only`` prints).
   The job's JSON summary gives wall time, per-stage busy time and docs/s.
3. The index: size on disk (du of the generation's files), then the in-process and served
   measurements of `jobs/bench_serve.py` (the same functions): load time of
   `ShardedIndex.open` and the RSS it adds, encode + search p50/p99 of 300 real query texts
   (scifact, splade-tiny) one at a time, recall@10 of the served blocked configuration against
   exact search, and the embedded endpoint on its replica's own port (as `lsr serve` answers) with
   1 and 8 concurrent clients. The real query texts come from another distribution than the
   synthetic documents (their terms land on the generator's random term map), so recall is
   also measured for the generator's own queries: recall@10 of the recorded defaults against
   exact search, and their search p50/p99 one at a time (``synthetic_queries``, on the index
   the in-process measurement opened).

Prints one JSON object per N and a table at the end. Timings are what this machine measured
while the job ran; nothing is extrapolated here (BENCHMARKS.md does that from these numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FILE_DOCS = 250_000
"""Documents per corpus Parquet file (the job plans read units within files)."""
ROW_GROUP = 10_000
"""Rows per Parquet row group: the unit the job's planner cuts read units at."""
GEN_DOCS = 1_000_000
"""Documents per generator chunk: bounds the harness's own memory at any N."""
N_SYNTH_QUERIES = 300
"""Queries drawn from the corpus's own generator model (recall of the index's defaults)."""
SAMPLE_S = 1.0
"""Seconds between two samples of process RSS and object-store usage."""


# -- corpus ---------------------------------------------------------------------------------------
def queries_path(folder: Path) -> Path:
    """Where `write_corpus` saves the generator's queries (beside the corpus, not in it)."""
    return folder.with_name(folder.name + "-queries.npz")


def write_corpus(folder: Path, n_docs: int, seed: int) -> float:
    """Write (or reuse) the N-document vectors corpus and its queries; returns seconds spent
    writing."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from pipeline.testing import synthetic

    # the generator's parameters and the file layout are the cache key: a corpus written by
    # another calibration (or drawn per chunk from independent seeds, as before) is written
    # again, not measured as if it were this one's
    stamp = json.dumps({"n_docs": n_docs, "seed": seed, "gen_docs": GEN_DOCS,
                        "file_docs": FILE_DOCS, "row_group": ROW_GROUP, "model": "one",
                        "n_queries": N_SYNTH_QUERIES,
                        "params": dataclasses.asdict(synthetic.SyntheticParams())}, sort_keys=True)
    done = folder / "DONE"
    if done.exists() and done.read_text() == stamp and queries_path(folder).exists():
        return 0.0
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpus = synthetic.SyntheticCorpus(n_docs, N_SYNTH_QUERIES, seed)
    file_no = 0
    lo = 0
    for docs in corpus.documents(GEN_DOCS):
        n = docs.shape[0]
        for f_lo in range(0, n, FILE_DOCS):
            part = docs[f_lo:f_lo + FILE_DOCS]
            indptr = part.indptr.astype(np.int64) - part.indptr[0]
            table = pa.table({
                "id": pa.array([f"d{lo + f_lo + i}" for i in range(part.shape[0])], pa.string()),
                "indices": pa.ListArray.from_arrays(pa.array(indptr.astype(np.int32)),
                                                    pa.array(part.indices.astype(np.int32))),
                "values": pa.ListArray.from_arrays(pa.array(indptr.astype(np.int32)),
                                                   pa.array(part.data.astype(np.float32))),
            })
            pq.write_table(table, folder / f"part-{file_no:05d}.parquet", row_group_size=ROW_GROUP)
            file_no += 1
        lo += n
        del docs
    sp.save_npz(queries_path(folder), corpus.queries())
    done.write_text(stamp)
    return time.perf_counter() - started


# -- sampling -------------------------------------------------------------------------------------
_PLASMA = re.compile(r"Plasma memory usage (\d+) MiB")
_SPILLED = re.compile(r"Spilled (\d+) MiB")


class Sampler:
    """Peak RSS of the driver and of the largest Ray process; object-store peak and spill."""

    def __init__(self, driver_pid: int, ray_address: str, head_pid: int,
                 dump_to: Path | None = None, dump_jump_mb: float = 100.0):
        self.driver_pid = driver_pid
        self.head_pid = head_pid
        self.address = ray_address
        self.driver_peak = 0
        self.worker_peak = 0
        self.worker_peak_name = ""
        self.plasma_peak_mib = 0
        self.spilled_mib = 0
        self.driver_series: list[tuple[float, float]] = []   # (s since start, driver RSS MB)
        # CPU seconds by what each process was doing (its Ray task title, e.g.
        # "ray::ReadCorpus->Write", sampled once a second: a delta goes to the current title)
        self.cpu_by_task: dict[str, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._started = time.perf_counter()
        # When the driver's RSS first rises `dump_jump_mb` above its level after start-up, its
        # Python stacks (py-spy dump, all threads) go to `dump_to`: what it was doing then.
        self.dump_to = dump_to
        self.dump_jump_mb = dump_jump_mb
        self._driver_base: float | None = None
        self.dumped_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._object_store()     # the final spill count

    def _object_store(self) -> None:
        from ray._private.internal_api import memory_summary

        try:
            text = memory_summary(self.address, stats_only=True)
        except Exception:  # noqa: BLE001 - the head may be busy; the next sample retries
            return
        if m := _PLASMA.search(text):
            self.plasma_peak_mib = max(self.plasma_peak_mib, int(m.group(1)))
        if m := _SPILLED.search(text):
            self.spilled_mib = max(self.spilled_mib, int(m.group(1)))

    def _maybe_dump(self, rss_mb: float) -> None:
        elapsed = time.perf_counter() - self._started
        if self.dump_to is None or self.dumped_at is not None or elapsed < 20:
            return
        if self._driver_base is None:        # the level once Ray, torch and the plan are loaded
            self._driver_base = rss_mb
            return
        if rss_mb - self._driver_base < self.dump_jump_mb:
            return
        self.dumped_at = round(elapsed, 1)
        spy = Path(sys.executable).with_name("py-spy")
        try:
            out = subprocess.run([str(spy), "dump", "--pid", str(self.driver_pid)],
                                 capture_output=True, text=True, timeout=30)
            text = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"py-spy dump failed: {exc}"
        self.dump_to.write_text(f"# driver RSS {rss_mb:.0f} MB at {elapsed:.1f} s "
                                f"(base {self._driver_base:.0f} MB)\n{text}")

    def _run(self) -> None:
        import psutil

        head = psutil.Process(self.head_pid)
        while not self._stop.is_set():
            # Only this Ray session's processes (descendants of its head): other Ray clusters on
            # the machine (tests, other jobs) must not count.
            try:
                session = head.children(recursive=True)
            except psutil.NoSuchProcess:
                session = []
            for proc in [psutil.Process(self.driver_pid), *session]:
                try:
                    rss = proc.memory_info().rss
                    cmd = " ".join(proc.cmdline())
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                cpu = times.user + times.system
                title = "driver" if proc.pid == self.driver_pid else cmd.split(" ")[0][:60]
                self.cpu_by_task[title] = self.cpu_by_task.get(title, 0.0) + \
                    cpu - self._last_cpu.get(proc.pid, cpu)
                self._last_cpu[proc.pid] = cpu
                if proc.pid == self.driver_pid:
                    self.driver_peak = max(self.driver_peak, rss)
                    self.driver_series.append((round(time.perf_counter() - self._started, 1),
                                               round(rss / 2**20, 1)))
                    self._maybe_dump(rss / 2**20)
                elif "ray::" in cmd or "default_worker.py" in cmd:
                    if rss > self.worker_peak:
                        self.worker_peak, self.worker_peak_name = rss, cmd.split(" ")[0][:60]
            self._object_store()
            self._stop.wait(SAMPLE_S)


# -- one N ----------------------------------------------------------------------------------------
def du_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_job(corpus: Path, out: Path, shard_size: int, address: str,
            head_pid: int, block_rows: int | None = None) -> tuple[dict, Sampler, float]:
    cmd = [sys.executable, "-m", "pipeline.cli", "index", str(corpus), str(out),
           "--format", "vectors", "--vector-keys", "ids", "--model", "splade-tiny",
           "--shard-size", str(shard_size), "--address", address, "--json"]
    if block_rows is not None:
        cmd += ["--block-rows", str(block_rows)]
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Sampler(proc.pid, address, head_pid,
                 dump_to=out.with_name(out.name + ".driver-dump.txt")) as sampler:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    out.with_name(out.name + ".stdout").write_text(stdout)       # kept for diagnosis
    out.with_name(out.name + ".stderr").write_text(stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"lsr index exited {proc.returncode}:\n{stderr[-3000:]}")
    return job_summary(stdout, stderr), sampler, wall


def job_summary(stdout: str, stderr: str) -> dict:
    """The job's ``--json`` summary: the last JSON object in its stdout (anything a library
    printed before it is skipped, and kept in the error when there is none)."""
    decoder = json.JSONDecoder()
    for start in reversed([0] + [m.end() for m in re.finditer(r"\n", stdout)]):
        if stdout.startswith("{", start):
            try:
                return decoder.raw_decode(stdout, start)[0]
            except json.JSONDecodeError:
                continue
    raise RuntimeError(f"no JSON summary in the job's stdout:\n{stdout[-2000:]}\n"
                       f"stderr:\n{stderr[-2000:]}")


def measure_index(root: str, queries: list[str], k: int) -> dict:
    """Load time and resident memory of the opened index (RSS this process gains)."""
    import gc

    import psutil

    from pipeline.search import ShardedIndex

    gc.collect()
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    index = ShardedIndex.open(root)
    load_s = time.perf_counter() - started
    after = psutil.Process().memory_info().rss
    index.search(queries[:2], k=k)
    del index
    gc.collect()
    return {"load_s": round(load_s, 2), "rss_added_mb": round((after - before) / 2**20, 1)}


def one_size(n_docs: int, args, queries: list[str]) -> dict:
    from bench_serve import in_process, served

    from pipeline.cli.serve import start_local_ray, stop_local_ray

    corpus = args.work / f"corpus-{n_docs}-seed{args.seed}"
    gen_s = write_corpus(corpus, n_docs, args.seed)
    out = args.work / f"index-{n_docs}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    head, address = start_local_ray(None)
    try:
        summary, sampler, wall = run_job(corpus, out, args.shard_size, address, head.pid,
                                         args.block_rows)
    finally:
        stop_local_ray(head)
    row = {
        "docs": n_docs, "block_rows": args.block_rows, "corpus_write_s": round(gen_s, 1),
        "job_wall_s": round(wall, 1), "job_docs_per_s": round(n_docs / wall, 1),
        "summary_wall_s": summary["wall_s"], "stages": summary["stages"],
        "bound_stage": summary["bound_stage"], "shards": summary["shards"], "nnz": summary["nnz"],
        "driver_peak_rss_mb": round(sampler.driver_peak / 2**20, 1),
        "largest_worker_peak_rss_mb": round(sampler.worker_peak / 2**20, 1),
        "largest_worker": sampler.worker_peak_name,
        "object_store_peak_mb": sampler.plasma_peak_mib, "spilled_mb": sampler.spilled_mib,
        "index_disk_mb": round(du_bytes(out) / 2**20, 1),
        "driver_dumped_at_s": sampler.dumped_at,
        "cpu_s_by_task": {t: round(c, 1) for t, c in sorted(sampler.cpu_by_task.items(),
                                                             key=lambda kv: -kv[1]) if c >= 0.5},
        # where in the job the driver's memory grows (every 10th sample)
        "driver_rss_mb_series": sampler.driver_series[::10],
    }
    print(json.dumps(row), flush=True)
    if args.job_only:
        if not args.keep:
            import shutil

            shutil.rmtree(out)
        return row
    row.update(measure_index(str(out), queries, args.k))
    import scipy.sparse as sp

    # the recorded defaults, for the real query texts and for the generator's own queries
    row["in_process"] = in_process(str(out), queries, args.k, {}, [], {
        "synthetic_queries": sp.load_npz(queries_path(corpus)).tocsr()})
    row["synthetic_queries"] = row["in_process"].pop("synthetic_queries")
    if args.clients:
        import ray
        from ray import serve

        from bench_serve import free_port
        from pipeline.serve.app import stop_endpoint

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            row["served"] = served(str(out), "embedded-direct", queries, args.k, args.clients,
                                   args.duration_s, port, {})
        finally:
            stop_endpoint("bench")
            serve.shutdown()
            ray.shutdown()
    if not args.keep:
        import shutil

        shutil.rmtree(out)
    return row


def print_table(rows: list[dict]) -> None:
    print()
    print("| docs | job s | docs/s | bound stage | driver peak MB | worker peak MB | store peak MB | "
          "spilled MB | disk MB | load s | RSS MB | recall@10 | in-proc p50 ms | served p50 / p99 ms "
          "(1 client) | 8 clients QPS | synthetic queries: recall@10, search p50 ms |")
    print("|" + "---|" * 16)
    for r in rows:
        if "in_process" not in r:
            print(f"| {r['docs']:,} | {r['job_wall_s']} | {r['job_docs_per_s']} | {r['bound_stage']} | "
                  f"{r['driver_peak_rss_mb']} | {r['largest_worker_peak_rss_mb']} | "
                  f"{r['object_store_peak_mb']} | {r['spilled_mb']} | {r['index_disk_mb']} | "
                  + "– | " * 7)
            continue
        served = {s["clients"]: s for s in r.get("served", [])}
        one, eight = served.get(1, {}), served.get(8, {})
        ip = r["in_process"]
        syn = r.get("synthetic_queries", {})
        recall = next((v for k, v in ip.items() if k.startswith("recall_at_")), None)
        syn_recall = next((v for k, v in syn.items() if k.startswith("recall_at_")), None)
        print(f"| {r['docs']:,} | {r['job_wall_s']} | {r['job_docs_per_s']} | {r['bound_stage']} | "
              f"{r['driver_peak_rss_mb']} | {r['largest_worker_peak_rss_mb']} | "
              f"{r['object_store_peak_mb']} | {r['spilled_mb']} | {r['index_disk_mb']} | "
              f"{r['load_s']} | {r['rss_added_mb']} | {recall} | {ip['p50_ms']} | "
              f"{one.get('p50_ms')} / {one.get('p99_ms')} | {eight.get('qps')} | "
              f"{syn_recall}, {syn.get('search_p50_ms')} |")


def main(argv: list[str] | None = None) -> None:
    from bench_serve import read_queries

    from pipeline.testing.machine import machine_line

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", default="100000,1000000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lsr-scale"))
    parser.add_argument("--shard-size", type=int, default=250_000)
    parser.add_argument("--block-rows", type=int, default=None,
                        help="The job's --block-rows (default: the job's own default).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=Path, default=Path("/work/shared/data/scifact/queries.jsonl"))
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--clients", default="1,8", help="Served load: client counts ('' to skip serving).")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="Keep each index (default: removed after).")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--job-only", action="store_true",
                        help="Measure the job only: no load, in-process or served run (for an index "
                             "larger than this machine's memory).")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"# {' '.join(sys.argv)}\n# {machine_line()}\n# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
          flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    queries = read_queries(args.queries, args.n_queries)
    rows = []
    for n in (int(x) for x in args.docs.split(",")):
        rows.append(one_size(n, args, queries))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)


if __name__ == "__main__":
    main()
