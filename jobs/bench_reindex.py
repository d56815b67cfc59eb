"""Benchmark: incremental re-indexing against a full index of the same collection, same run.

    flock /tmp/lsr-bench.lock .venv/bin/python jobs/bench_reindex.py ../shared/data/scifact \
        --out bench-output/reindex --fraction 0.01 --shard-size 2000

1. Full index of the collection (the peer: what re-indexing without this feature costs).
2. About `fraction` of the documents changed, spread over the whole corpus (a third edited,
   a third deleted, a third added as new ids), re-indexed: every shard is touched.
3. The same amount of change inside the first shard only, re-indexed from generation 1.

Prints one JSON object: wall times, the ratio of each re-index to the full index, documents
re-encoded and shards rebuilt/reused, with the command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.testing.machine import machine_line


def _records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def changed_corpus(records: list[dict], picks: list[int], n_added: int) -> list[dict]:
    """Edit the first half of `picks`, delete the other half; append `n_added` documents that
    reuse texts of the collection under new ids (real text, new documents)."""
    half = len(picks) // 2
    edited, deleted = set(picks[:half]), set(picks[half:])
    out = [{**r, "text": r["text"] + " (corrected)"} if i in edited else r
           for i, r in enumerate(records) if i not in deleted]
    donors = records[-n_added:]
    return out + [{**d, "_id": f"bench-added-{k}"} for k, d in enumerate(donors)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("collection", type=Path, help="BEIR folder (its corpus.jsonl is used)")
    parser.add_argument("--out", type=Path, default=Path("bench-output/reindex"))
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import ray

    from pipeline.batch import IndexJobConfig, run_index_job
    from pipeline.batch import ReindexConfig, run_reindex
    from pipeline.catalog import IndexLayout, read_manifest
    from pipeline.format import read_postings

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    records = _records(args.collection / "corpus.jsonl")
    n_change = max(3, round(args.fraction * len(records)))
    rng = np.random.default_rng(args.seed)

    base = args.out / "base"
    started = time.perf_counter()
    full = run_index_job(IndexJobConfig(corpus=str(args.collection), output=str(base),
                                        shard_size=args.shard_size))
    full_s = time.perf_counter() - started

    def reindex(name: str, picks: list[int]) -> dict:
        root = args.out / name
        shutil.copytree(base, root)
        corpus = _write(args.out / f"{name}.jsonl", changed_corpus(records, picks, n_change // 3))
        t0 = time.perf_counter()
        s = run_reindex(ReindexConfig(corpus=str(corpus), index=str(root)))
        wall = time.perf_counter() - t0
        return {"wall_s": round(wall, 2), "ratio_to_full_index": round(wall / full_s, 3),
                "docs_added": s.docs_added, "docs_changed": s.docs_changed,
                "docs_deleted": s.docs_deleted, "docs_reencoded": s.docs_reencoded,
                "shards_rebuilt": s.shards_rebuilt, "shards_reused": s.shards_reused,
                "shards_added": s.shards_added, "build_busy_s": s.stages["build"]["busy_s"],
                "encode_busy_s": s.stages["encode"]["busy_s"]}

    # Spread: documents drawn over the whole corpus (every shard touched).
    spread = sorted(rng.choice(len(records), size=n_change - n_change // 3, replace=False).tolist())
    # Concentrated: the same number inside the first shard of generation 1.
    layout = IndexLayout.at(str(base))
    first = set(read_postings(layout.postings(read_manifest(layout).shards[0].name)).doc_ids)
    in_first = [i for i, r in enumerate(records) if r["_id"] in first]
    concentrated = sorted(rng.choice(in_first, size=len(spread), replace=False).tolist())
    result = {
        "command": " ".join(sys.argv), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_line(),
        "collection": str(args.collection), "documents": len(records), "changed_documents": n_change,
        "full_index": {"wall_s": round(full_s, 2), "docs": full.docs_indexed, "shards": full.shards,
                       "encode_busy_s": full.stages["encode"]["busy_s"],
                       "build_busy_s": full.stages["build"]["busy_s"]},
        "reindex_spread": reindex("spread", spread),
        "reindex_one_shard": reindex("one-shard", concentrated),
    }
    print(json.dumps(result, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
