"""`make demo`: index the embedded demo corpus with the real job on the embedded default
(a local Ray, a local directory, the CPU), then search it and show what SPLADE does.

    python jobs/demo.py [--output demo-output] [--max-docs N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUERIES = [
    "read a file line by line",
    "parse command line arguments",
    "match text with a regular expression",
    "run code concurrently in threads",
    "what happens when an exception is raised",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo-output")
    parser.add_argument("--max-docs", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from pipeline.data.demo import write_demo_corpus
    from pipeline.batch import IndexJobConfig, run_index_job
    from pipeline.search import ShardedIndex

    corpus = os.path.join(args.output, "corpus.jsonl")
    n = write_demo_corpus(corpus, args.max_docs)
    print(f"\nDemo corpus: {n} documents from Python's own documentation -> {corpus}")
    summary = run_index_job(IndexJobConfig(corpus=corpus, output=os.path.join(args.output, "index"),
                                           shard_size=max(1, n // 2)))
    print(f"\nIndexed {summary.docs_indexed} documents into {summary.shards} shards "
          f"(generation {summary.generation}) in {summary.wall_s:.1f} s "
          f"({summary.docs_per_s:.1f} docs/s end to end; bound by {summary.bound_stage}).")

    titles = {}
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            titles[record["_id"]] = record["title"]
    index = ShardedIndex.open(os.path.join(args.output, "index"))
    encoder = index.encoder()
    vectors = encoder.encode_queries(QUERIES)
    index.search_vectors(vectors[:1], k=3)  # the first call compiles the search kernels
    started = time.perf_counter()
    results = [index.search_vectors(vectors[q:q + 1], k=3)[0] for q in range(len(QUERIES))]
    took = (time.perf_counter() - started) * 1000 / len(QUERIES)
    tokens = index.tokens()
    for q, (query, hits) in enumerate(zip(QUERIES, results)):
        row = vectors[q]
        order = row.data.argsort()[::-1][:8]
        terms = [tokens[t] if tokens else str(t) for t in row.indices[order].tolist()]
        expansion = ", ".join(f"{t} {w:.2f}" for t, w in zip(terms, row.data[order]))
        print(f"\nquery: {query}\n  expansion: {expansion}")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank}. {hit.score:6.2f}  {titles.get(hit.doc_id, hit.doc_id)}")
    print(f"\n{took:.2f} ms per query (one at a time, encoding excluded) over {index.n_docs} documents. "
          f"Try: lsr search {os.path.join(args.output, 'index')} \"your query\"")


if __name__ == "__main__":
    main()
