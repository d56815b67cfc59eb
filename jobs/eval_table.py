"""The README's effectiveness table: splade-tiny (exact and approximate) beside BM25 on BEIR collections.

    flock /tmp/lsr-bench.lock .venv/bin/python jobs/eval_table.py /work/shared/data \\
        --collections scifact vaswani cisi --out eval_table.json

Per collection: documents encoded once with `SpladeEncoder` (splade-tiny, 256 / 64 tokens), then
`ExactIndex` and `BlockedIndex` (defaults) over the same encodings, and bm25s BM25 (k1=0.9, b=0.4,
Lucene idf, lower-cased word tokens, English stop words, no stemming), all evaluated by
`pipeline.evaluate.run_evaluation` with BEIR conventions at k=1000. Prints a Markdown table with the
command, machine and date; writes every number to --out as JSON. ``--render FILE`` prints the
table again from such a JSON file without measuring anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

from pipeline.evaluate.backends import SpladeBackend
from pipeline.evaluate.bm25 import BM25Backend
from pipeline.evaluate.report import format_table
from pipeline.evaluate.runner import (
    EvalConfig,
    EvalResult,
    load_collection,
    run_evaluation,
)
from pipeline.testing.machine import machine_line

log = logging.getLogger("eval_table")

TABLE_METRICS = ["nDCG@10", "R@100", "RR@10", "R@10 vs exact"]


def evaluate_collection(folder: Path, encoder, config: EvalConfig) -> tuple[list[EvalResult], dict]:
    collection = load_collection(str(folder))
    started = time.perf_counter()
    docs = encoder.encode(collection.texts)
    encode_s = time.perf_counter() - started
    log.info("%s: %d documents encoded in %.1f s (%.1f docs/s)", collection.name, len(collection.texts),
             encode_s, len(collection.texts) / encode_s)
    started = time.perf_counter()
    exact = SpladeBackend.build(collection.doc_ids, docs, encoder, exact=True)
    approx = SpladeBackend.build(collection.doc_ids, docs, encoder, exact=False)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    bm25 = BM25Backend(collection.doc_ids, collection.texts)
    bm25_build_s = time.perf_counter() - started
    results = [run_evaluation(collection, exact, config),
               run_evaluation(collection, approx, config, exact_backend=exact),
               run_evaluation(collection, bm25, config)]
    timing = {"encode_docs_s": encode_s, "docs_per_s": len(collection.texts) / encode_s,
              "splade_index_build_s": build_s, "bm25_index_s": bm25_build_s, "doc_nnz": int(docs.nnz)}
    return results, timing


def print_table(results: list[EvalResult], command: str, machine: str, date: str, k: int) -> None:
    print(format_table(results, TABLE_METRICS))
    print()
    print(f"Command: `{command}`; {machine}; {date}. k={k}. Latency: one query at a time, end to end "
          f"(query encoding + search) and search alone; QPS: all judged queries in one batch.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="?", help="folder holding the BEIR collections")
    parser.add_argument("--collections", nargs="+", default=["scifact", "vaswani", "cisi"])
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="write every number here as JSON")
    parser.add_argument("--render", type=Path, default=None, help="print the table of a saved --out file")
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        print_table([EvalResult.from_dict(r) for r in saved["results"]], saved["command"], saved["machine"],
                    saved["date"], saved["results"][0]["k"])
        return 0
    if args.data is None:
        parser.error("the data folder is required unless --render is given")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.encode import SpladeEncoder

    encoder = SpladeEncoder(model="splade-tiny", max_length=256, query_max_length=64)
    config = EvalConfig(k=args.k)
    results: list[EvalResult] = []
    timings: dict[str, dict] = {}
    for name in args.collections:
        got, timings[name] = evaluate_collection(args.data / name, encoder, config)
        results += got

    command = "flock /tmp/lsr-bench.lock .venv/bin/python jobs/eval_table.py " + " ".join(argv or sys.argv[1:])
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_line()
    print_table(results, command, machine, date, args.k)
    if args.out is not None:
        args.out.write_text(json.dumps({"command": command, "date": date, "machine": machine,
                                        "encoder": encoder.settings(), "timing": timings,
                                        "results": [r.to_dict() for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
