"""Counting experiment: does a kNN-graph refinement of the top-k (Seismic's kNN option)
buy recall cheaper than searching deeper?  Counts only (documents scored), no timing."""
import sys, os, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import numpy as np, scipy.sparse as sp
from jobs.bench_index import real_collections
from jobs.index_sweep import counted_search
from pipeline.index import BlockedIndex, ExactIndex, recall_at_k

K = 10
only = sys.argv[1] if len(sys.argv) > 1 else "union"
KAPPA = 30
ds = real_collections("cisi,scifact,vaswani", "/work/cache", "", with_union=True, only=only)[0]
X = ds.docs.tocsr().astype(np.float32)
Q = ds.queries.tocsr().astype(np.float32)
ex = ExactIndex(X)
truth = ex.search(Q, K)[0]
gpath = f"/tmp/knn/graph-{only}-{KAPPA}.npy"
if os.path.exists(gpath):
    G = np.load(gpath)
else:
    t = time.time()
    XT = X.T.tocsr()
    G = np.empty((X.shape[0], KAPPA), np.int64)
    for a in range(0, X.shape[0], 2000):
        S = (X[a:a+2000] @ XT).toarray()
        for i in range(S.shape[0]):
            S[i, a + i] = -np.inf
        part = np.argpartition(-S, KAPPA, axis=1)[:, :KAPPA]
        ps = np.take_along_axis(S, part, 1)
        order = np.argsort(-ps, axis=1)
        G[a:a+2000] = np.take_along_axis(part, order, 1)
    np.save(gpath, G)
    print(f"graph {time.time()-t:.1f}s", flush=True)
idx = BlockedIndex.build(X)
print(idx.config if hasattr(idx, 'config') else '', flush=True)
Xd = X  # exact scoring of neighbours

def refine(docs, kappa):
    """top-k of (search's top-k) u (kappa neighbours of each) scored exactly; returns
    (new top-k, extra docs scored beyond the search's)"""
    out = np.empty_like(docs); extra = 0
    for qi in range(docs.shape[0]):
        top = docs[qi][docs[qi] >= 0]
        nb = np.unique(G[top, :kappa].ravel())
        nb = np.setdiff1d(nb, top)
        extra += nb.size
        cand = np.concatenate([top, nb])
        s = (Xd[cand] @ Q[qi].T).toarray().ravel()
        o = np.argsort(-s, kind="stable")[:K]
        out[qi, :len(o)] = cand[o]
        out[qi, len(o):] = -1
    return out, extra / docs.shape[0]

for qc in (() if os.environ.get('SKIP_GRID') else (4, 5, 6, 8, 10, 12, 15)):
    for hf in (0.7, 0.8, 0.9, 1.0):
        docs, counts, _ = counted_search(idx, Q, qc, hf)
        r = recall_at_k(docs, truth)
        line = f"qc {qc:2d} hf {hf:.1f}: R {r:.4f} docs {counts[1]:7.1f} entries {counts[2]/1e3:6.1f}k"
        for kappa in (2, 5, 10):
            rd, extra = refine(docs, kappa)
            line += f" | k{kappa}: R {recall_at_k(rd, truth):.4f} +{extra:5.1f} docs (upper bound)"
        print(line, flush=True)

# --- actual extra: neighbours the search did not already score (step-by-step kernels) ---
import pipeline.index.search_kernels as sk
def scored_sets(qc, hf):
    sc = idx._scratch(qc * idx._max_list_blocks, qc, K)
    ix = idx._view
    out = []
    for qi in range(Q.shape[0]):
        a, b = Q.indptr[qi], Q.indptr[qi + 1]
        qt = Q.indices[a:b].astype(np.int32); qv = Q.data[a:b]
        for i in range(qt.size):
            sc.q_dense[qt[i]] = qv[i] * ix.q_scale; sc.q_weight[qt[i]] = qv[i]
        n_cut = sk.select_cut_terms(qv, qc, sc.cut)
        n_cand = sk.score_summaries(ix, qt, qv, sc.q_weight, sc.cut, n_cut, sc.cand_block,
                                    sc.acc_code, sc.acc_q, sc.dots)
        sk.order_blocks(sc.dots, sc.heap, n_cand)
        size, nt = sk.score_blocks(ix, hf, n_cand, sc)
        out.append(set(sc.touched[:nt].tolist()))
        for i in range(qt.size):
            sc.q_dense[qt[i]] = 0.0; sc.q_weight[qt[i]] = 0.0
        sc.visited[:] = 0
    return out

print("actual extra documents (neighbours not scored by the search):", flush=True)
for qc, hf in ((5, 0.9), (6, 0.8), (6, 1.0), (8, 0.8), (8, 0.9), (8, 1.0), (10, 0.9), (12, 1.0)):
    docs, counts, _ = counted_search(idx, Q, qc, hf)
    seen = scored_sets(qc, hf)
    line = f"qc {qc:2d} hf {hf:.1f}: R {recall_at_k(docs, truth):.4f} docs {counts[1]:7.1f}"
    for kappa in (2, 5, 10):
        rd, _ = refine(docs, kappa)
        extra = np.mean([len(set(G[docs[qi][docs[qi] >= 0], :kappa].ravel().tolist()) - seen[qi])
                         for qi in range(Q.shape[0])])
        line += f" | k{kappa}: R {recall_at_k(rd, truth):.4f} +{extra:5.1f} docs"
    print(line, flush=True)
