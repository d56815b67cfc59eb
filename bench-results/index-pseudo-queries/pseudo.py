"""Prototype: do pseudo-queries drawn from the documents predict real queries' recall over the grid?"""
import sys, time
sys.path.insert(0, '/work/main'); sys.path.insert(0, '/work/main/jobs')
import numpy as np, scipy.sparse as sp
from bench_index import load_real, union
from pipeline.index import ExactIndex, BlockedIndex
GRID = [(4,.8),(6,.8),(8,.8),(10,.8),(15,.8),(4,.9),(6,.9),(8,.9),(10,.9),(15,.9),(6,1.),(10,1.),(15,1.),(10,.7),(15,.7)]
def recall(got, want):
    return np.mean([len(set(g[g >= 0]) & set(w[w >= 0])) / max(1, (w >= 0).sum()) for g, w in zip(got, want)])
def pseudo(docs, n, frac, rng):
    rows = rng.choice(docs.shape[0], n, replace=False)
    out = []
    for r in rows:
        a, b = docs.indptr[r], docs.indptr[r + 1]
        idx, val = docs.indices[a:b], docs.data[a:b]
        m = max(1, int(np.ceil(frac * idx.size)))
        keep = np.argsort(-val, kind="stable")[:m]
        o = np.argsort(idx[keep])
        out.append(sp.csr_matrix((val[keep][o], idx[keep][o], [0, m]), shape=(1, docs.shape[1])))
    return sp.vstack(out).tocsr(), rows
sets = [load_real(n, "/work/cache", "/work/shared/data") for n in "cisi,scifact,vaswani".split(",")]
sets.append(union(sets))
rng = np.random.default_rng(0)
for ds in sets:
    t = time.time()
    ix = BlockedIndex.build(ds.docs)
    ex = ExactIndex(ds.docs)
    cfg = ix.config
    qs = {"real": (ds.queries, None)}
    for f in (0.3, 0.5):
        qs[f"pseudo{f}"] = pseudo(ds.docs, 300, f, rng)
    res = {}
    for name, (q, src) in qs.items():
        want = ex.search(q, k=11, threads=2)[0]
        if src is not None:  # drop the source document
            want = np.array([[d for d in row if d != s][:10] for row, s in zip(want, src)])
        else:
            want = want[:, :10]
        r = []
        for qc, hf in GRID + [(cfg.query_cut, cfg.heap_factor)]:
            got = ix.search(q, k=11 if src is not None else 10, query_cut=qc, heap_factor=hf, threads=2)[0]
            if src is not None:
                got = np.array([[d for d in row if d != s][:10] for row, s in zip(got, src)])
            r.append(recall(got, want))
        res[name] = r
    print(f"--- {ds.name} (derived qc {cfg.query_cut} hf {cfg.heap_factor}; real q nnz {np.diff(ds.queries.indptr).mean():.0f}, doc nnz {np.diff(ds.docs.indptr).mean():.0f}) {time.time()-t:.0f}s")
    for i, (qc, hf) in enumerate(GRID + [("D", "D")]):
        print(f"  qc {qc} hf {hf}: " + "  ".join(f"{k} {v[i]:.3f}" for k, v in res.items()))
