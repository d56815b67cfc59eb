"""Ours on the saved union index: 'full' (search_serial), 'summary' (cut terms, summary
scores, block heap only) or 'none' (load + warm-up only); argv: mode N qc. Under cachegrind
the differences give instructions per phase."""
import sys, os, json
sys.path.insert(0, "/work/main")
import numpy as np
from numba import njit
import pipeline.index.search_kernels as sk
from jobs.bench_index import real_collections
from pipeline.index import BlockedIndex
from pipeline.index.config import BlockedIndexConfig
from pipeline.index.topk import empty_results

@njit(cache=True, nogil=True)
def summary_only(ix, q_indptr, q_indices, q_data, query_cut, sc):
    total = 0
    for qi in range(q_indptr.size - 1):
        a, b = q_indptr[qi], q_indptr[qi + 1]
        q_terms = q_indices[a:b]
        q_values = q_data[a:b]
        for i in range(q_terms.size):
            sc.q_weight[q_terms[i]] = q_values[i]
        n_cut = sk.select_cut_terms(q_values, query_cut, sc.cut)
        n_cand = sk.score_summaries(ix, q_terms, q_values, sc.q_weight, sc.cut, n_cut,
                                    sc.cand_block, sc.acc_code, sc.acc_q, sc.dots)
        sk.order_blocks(sc.dots, sc.heap, n_cand)
        total += n_cand
        for i in range(q_terms.size):
            sc.q_weight[q_terms[i]] = 0.0
    return total

mode, n, qc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = real_collections("cisi,scifact,vaswani", "/work/cache", "", True, "union")[0]
meta = json.load(open("/tmp/cg/ours.json"))
z = np.load("/tmp/cg/ours.npz")
ix = BlockedIndex.from_arrays({k: z[k] for k in z.files}, BlockedIndexConfig(**meta["config"]),
                              meta["n_docs"], meta["vocab"], meta["nnz"])
q = ds.queries[:max(n, 2)]
qp = q.indptr.astype(np.int64)
sc = ix._scratch(qc * ix._max_list_blocks, qc, 10)
out_d, out_s = empty_results(q.shape[0], 10)
nothing = np.zeros(0, np.uint64)
# warm-up / compile on 2 queries
summary_only(ix._view, qp[:3], q.indices, q.data, qc, sc)
sk.search_serial(ix._view, qp[:3], q.indices, q.data, qc, 0.8, sc, out_d, out_s, nothing)
if mode == "summary" and n:
    print("candidates", summary_only(ix._view, qp, q.indices, q.data, qc, sc) / n)
elif mode == "full" and n:
    sk.search_serial(ix._view, qp, q.indices, q.data, qc, 0.8, sc, out_d, out_s, nothing)
    print("rows", int((out_d >= 0).sum()))
