"""Per-query mass-based query cut vs fixed cut: recall and counted work."""
import sys, os, time, json
sys.path.insert(0, "/work/main")
import numpy as np, scipy.sparse as sp
from jobs.bench_index import real_collections
from jobs.index_sweep import counted_search, K
from pipeline.index import BlockedIndex, ExactIndex, recall_at_k

def cuts_for(q, rule, x):
    n = np.diff(q.indptr)
    out = np.empty(q.shape[0], np.int64)
    for i in range(q.shape[0]):
        w = np.sort(q.data[q.indptr[i]:q.indptr[i+1]])[::-1].astype(np.float64)
        if rule == "fixed": c = x
        elif rule == "l1": c = int(np.searchsorted(np.cumsum(w) / w.sum(), x) + 1)
        elif rule == "l2": c = int(np.searchsorted(np.cumsum(w*w) / (w*w).sum(), x) + 1)
        elif rule == "sqrt": c = int(round(x * np.sqrt(n[i])))
        out[i] = max(1, min(c, n[i] if n[i] else 1))
    return out

def run(index, q, cuts, hf):
    docs = np.full((q.shape[0], K), -1, np.int64); work = np.zeros(3); secs = 0.0
    for c in np.unique(cuts):
        rows = np.flatnonzero(cuts == c)
        d, w, s = counted_search(index, q[rows], int(c), hf)
        docs[rows] = d; work += w * rows.size; secs += s
    return docs, work / q.shape[0], secs / q.shape[0] * 1e6

names = sys.argv[1].split(",")
build = sys.argv[2] if len(sys.argv) > 2 else "d"
sets = real_collections("cisi,scifact,vaswani", "/work/cache", "", with_union=True, only=",".join(names))
res = []
for ds in sets:
    q = ds.queries.tocsr(); docs = ds.docs.tocsr()
    truth, _ = ExactIndex(docs).search(q, K)
    kw = {}
    if build != "d":
        from pipeline.index.blocked import used_terms
        ml = docs.nnz / used_terms(docs)
        kw = dict(n_postings=max(1, round(float(build) * ml)), centroid_fraction=0.1, summary_energy=0.4)
    index = BlockedIndex.build(docs, **kw)
    cfg = index.config
    nq = np.diff(q.indptr)
    print(f"== {ds.name} docs {docs.shape[0]} q {q.shape[0]} qlen mean {nq.mean():.1f} med {np.median(nq):.0f}  n_postings {cfg.n_postings} qc {cfg.query_cut} hf {cfg.heap_factor}", flush=True)
    specs = [("fixed", x) for x in (4, 6, 8, 10, 12, 15, 20)] + [("l1", x) for x in (0.3, 0.4, 0.5, 0.6)] + \
            [("l2", x) for x in (0.6, 0.7, 0.8, 0.9)] + [("sqrt", x) for x in (0.8, 1.0, 1.3, 1.6)]
    for rule, x in specs:
        cuts = cuts_for(q, rule, x)
        for hf in (0.8, 0.9, 1.0):
            d, work, us = run(index, q, cuts, hf)
            r = recall_at_k(d, truth)
            row = dict(ds=ds.name, rule=rule, x=x, hf=hf, cut_mean=float(cuts.mean()), recall=float(r),
                       blocks=work[0], scored=work[1], entries=work[2], us=us)
            res.append(row)
            print(f"{rule:5s} {x:5} hf {hf}: cut {cuts.mean():5.1f}  R {r:.4f}  blocks {work[0]:6.0f} scored {work[1]:6.0f} entries {work[2]/1e3:6.1f}k  {us:6.1f} us", flush=True)
json.dump(res, open(f"bench-results/index-masscut/res-{'_'.join(names)}-{build}.json", "w"))
