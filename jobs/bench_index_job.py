"""Benchmark of the indexing job: documents per second end to end and per stage.

    python jobs/bench_index_job.py [--corpus ../shared/data/scifact] [--shard-size 2000]
                                   [--num-encoders N] [--index-kind blocked] [--repeats 1]

Runs the real job (`run_index_job`) on a local Ray and reads its stage counters: every
stage records the seconds it was busy per document, so for each stage we report its
throughput per busy worker and its capacity given how many workers it had. The stage
with the lowest capacity bounds the job. Prints the command, the machine and the date.
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
    default_corpus = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=os.path.normpath(default_corpus))
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--num-encoders", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--index-kind", default="blocked")
    parser.add_argument("--model", default="splade-tiny")
    parser.add_argument("--output", default=None, help="Index root (default: a temporary directory, removed).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from pipeline.batch import (
        EncoderOptions,
        IndexJobConfig,
        ResourceOptions,
        run_index_job,
    )
    from pipeline.batch.index_job import plan_resources

    started = time.perf_counter()
    ray.init(configure_logging=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - started
    output = args.output or tempfile.mkdtemp(prefix="bench-index-job-")
    config = IndexJobConfig(corpus=args.corpus, output=output, shard_size=args.shard_size,
                            index_kind=args.index_kind,
                            encoder=EncoderOptions(model=args.model, batch_size=args.batch_size),
                            resources=ResourceOptions(num_encoders=args.num_encoders))
    placement = plan_resources(config, ray.cluster_resources())
    summary = run_index_job(config)
    if args.output is None:
        shutil.rmtree(output, ignore_errors=True)

    workers = {"read": None, "tokenize": None, "encode": placement.num_encoders, "write": None, "build": None}
    rows = []
    for name, stage in summary.stages.items():
        rate = stage["docs_per_busy_s"]
        rows.append({"stage": name, "docs": stage["rows"], "busy_s": stage["busy_s"],
                     "docs_per_busy_s": rate, "workers": workers[name]})
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine_line(), "date": dt.date.today().isoformat(),
        "corpus": args.corpus, "model": args.model, "docs": summary.docs_indexed, "shards": summary.shards,
        "encoder_actors": placement.num_encoders, "torch_threads_per_actor": placement.torch_threads,
        "ray_start_s": round(ray_start_s, 2), "job_wall_s": summary.wall_s,
        "docs_per_s_end_to_end": summary.docs_per_s, "stages": rows, "bound_stage": summary.bound_stage,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# indexing job benchmark\ncommand: {report['command']}\nmachine: {report['machine']}\n"
          f"date:    {report['date']}\ncorpus:  {args.corpus} ({summary.docs_indexed} docs, "
          f"{summary.shards} shards), model {args.model}\n"
          f"encoder: {placement.num_encoders} actor(s) x {placement.torch_threads} torch thread(s)\n")
    print(f"end to end: {summary.wall_s:.1f} s job wall time (+{ray_start_s:.1f} s Ray start), "
          f"{summary.docs_per_s:.1f} docs/s\n")
    print("| stage | docs | busy s (all workers) | docs / busy s | workers |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        rate = f"{r['docs_per_busy_s']:.1f}" if r["docs_per_busy_s"] else "-"
        print(f"| {r['stage']} | {r['docs']} | {r['busy_s']:.2f} | {rate} | {r['workers'] or 'tasks'} |")
    print(f"\nbound by: {summary.bound_stage}")
    ray.shutdown()


if __name__ == "__main__":
    main()
