"""How well block summaries stand for a query's best documents: real encodings against synthetic ones.

    flock /tmp/lsr-cpu.lock python jobs/summary_fidelity.py [--cache /work/cache]
        [--fraction 2] [--query-cut 5] [--queries 300] [--seed 0] [--gen-params '{...}']

The blocked index visits blocks best summary first and stops at the first block whose summary
score is under ``heap_factor`` x the heap's k-th score. A true top-10 document ``d`` is
therefore found at heap_factor ``h`` roughly when ``S_d >= h x kth``, where ``S_d`` is the best
summary score among the blocks holding ``d`` in the lists of the query's ``--query-cut``
heaviest terms and ``kth`` the exact 10th score. The share of top-10 documents with ``S_d / kth``
in [0.8, 1) is what heap_factor 1.0 loses against 0.8.

For the union of the real splade-tiny encodings of cisi, scifact and vaswani (`jobs/bench_index.py`'s
``load_real``) and synthetic vectors of the same size, each indexed with ``n_postings`` =
``--fraction`` x the mean list (centroid fraction 0.1, energy 0.4, as in `jobs/bench_generator.py`),
it prints quantiles of, over the first ``--queries`` queries and their exact top-10 documents:
- ``S_d / kth`` and its share under 0.8, in [0.8, 1) and from 1 up;
- fidelity ``S_d / score_d``, split over the best block's summary into the part on terms ``d``
  holds ("magnitude") and on terms it lacks ("coverage");
- the unpruned block maximum on ``d``'s terms over ``score_d`` (what energy pruning starts from).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.bench_index import load_real, union  # noqa: E402
from pipeline.index import BlockedIndex  # noqa: E402
from pipeline.testing import synthetic  # noqa: E402
from pipeline.testing.machine import machine_line  # noqa: E402

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75)


def summary_matrix(index: BlockedIndex) -> tuple[sp.csr_matrix, np.ndarray]:
    """The dequantised summaries as a (blocks, vocab) matrix, and the document id of each
    posting."""
    a = index.arrays()
    block, term, value = index.summary_entries()
    summaries = sp.csr_matrix((value, (block, term)), shape=(a["block_min"].size, index.vocab_size))
    posting_doc = (a["fwd_words"][a["postings"]].astype(np.int64)) & 0xFFFFFFFF  # header word 0: d
    return summaries, posting_doc


def measure(name: str, docs: sp.csr_matrix, queries: sp.csr_matrix, fraction: float, query_cut: int,
            n_queries: int, k: int = 10) -> dict:
    index = BlockedIndex.build(docs, n_postings=max(1, round(fraction * docs.nnz / docs.shape[1])),
                               centroid_fraction=0.1, summary_energy=0.4, max_fraction=1.5)
    summaries, posting_doc = summary_matrix(index)
    a = index.arrays()
    list_block, block_post = a["list_block_ptr"], a["block_post_ptr"]
    n_queries = min(n_queries, queries.shape[0])
    exact = (queries[:n_queries] @ docs.T).toarray()
    out = {k_: [] for k_ in ("s_over_kth", "fidelity", "magnitude", "coverage", "unpruned")}
    for i in range(n_queries):
        q = queries[i]
        heaviest = q.indices[np.lexsort((np.arange(q.nnz), -q.data))[:query_cut]]
        blocks = np.concatenate([np.arange(list_block[t], list_block[t + 1]) for t in heaviest])
        top = np.argsort(-exact[i], kind="stable")[:k]
        kth = exact[i][top[-1]]
        if blocks.size == 0 or kth <= 0:
            continue
        block_scores = np.asarray((summaries[blocks] @ q.T).todense()).ravel()
        best_score, best_block = {}, {}
        for b, s in zip(blocks, block_scores):
            for d in posting_doc[block_post[b]:block_post[b + 1]]:
                if s > best_score.get(d, -1.0):
                    best_score[d], best_block[d] = s, b
        q_dense = q.toarray().ravel()
        for d in top:
            score = exact[i][d]
            out["s_over_kth"].append(best_score.get(d, 0.0) / kth)
            out["fidelity"].append(best_score.get(d, 0.0) / score)
            if d in best_block:
                b = best_block[d]
                row = summaries[b].toarray().ravel()
                has = np.zeros(docs.shape[1], bool)
                has[docs.indices[docs.indptr[d]:docs.indptr[d + 1]]] = True
                out["magnitude"].append((q_dense[has] * row[has]).sum() / score)
                out["coverage"].append((q_dense[~has] * row[~has]).sum() / score)
                mates = posting_doc[block_post[b]:block_post[b + 1]]
                block_max = docs[mates][:, np.flatnonzero(has)].max(axis=0).toarray().ravel()
                out["unpruned"].append((q_dense[has] * block_max).sum() / score)
    arrays = {key: np.asarray(v) for key, v in out.items()}
    ratio = arrays["s_over_kth"]
    result = {"name": name, "shares": {"under_0.8": float((ratio < 0.8).mean()),
                                       "0.8_to_1": float(((ratio >= 0.8) & (ratio < 1.0)).mean()),
                                       "from_1": float((ratio >= 1.0).mean())},
              "quantiles": {key: np.round(np.quantile(v, QUANTILES), 3).tolist() for key, v in arrays.items()}}
    shares = result["shares"]
    print(f"{name:9s} S_d/kth under 0.8 {shares['under_0.8']:.3f}, in [0.8, 1) {shares['0.8_to_1']:.3f}, "
          f"from 1 {shares['from_1']:.3f}", flush=True)
    for key, values in result["quantiles"].items():
        print(f"          {key:11s} quantiles {QUANTILES}: {values}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="/work/cache")
    parser.add_argument("--data", default="")
    parser.add_argument("--fraction", type=float, default=2.0)
    parser.add_argument("--query-cut", type=int, default=5)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen-params", default="{}", help="overrides of synthetic.SyntheticParams (JSON)")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()
    try:
        params = synthetic.params_from_json(args.gen_params)
    except ValueError as e:         # json.JSONDecodeError included
        parser.error(f"--gen-params: {e}")
    print(f"command: {' '.join(sys.argv)}\nmachine: {machine_line()}", flush=True)
    real = union([load_real(n, args.cache, args.data) for n in ("cisi", "scifact", "vaswani")])
    docs, queries = synthetic.generate(real.docs.shape[0], real.queries.shape[0], args.seed, params=params)
    print(f"{args.fraction}x mean list, query_cut {args.query_cut}, first {args.queries} queries; "
          f"synthetic: seed {args.seed}, {json.loads(args.gen_params) or 'defaults'}", flush=True)
    results = [measure("real", real.docs, real.queries, args.fraction, args.query_cut, args.queries),
               measure("synthetic", docs, queries, args.fraction, args.query_cut, args.queries)]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
