import sys; sys.path.insert(0, "/work/main")
import numpy as np
from jobs.bench_index import real_collections
from pipeline.index import BlockedIndex, ExactIndex, recall_at_k
from pipeline.index.blocked import used_terms
for ds in real_collections("cisi,scifact,vaswani", "/work/cache", "", with_union=True):
    docs, q = ds.docs.tocsr(), ds.queries.tocsr()
    truth, _ = ExactIndex(docs).search(q, 10)
    ml = docs.nnz / used_terms(docs)
    row = []
    for mult in (2.5, 1.5, 1.0, 0.7):
        idx = BlockedIndex.build(docs, n_postings=max(1, round(mult * ml)))
        c = idx.config
        r = recall_at_k(idx.search(q, 10, threads=2)[0], truth)
        base = max(4, min(16, round(0.7 * np.sqrt(docs.nnz / docs.shape[0]))))
        rb = recall_at_k(idx.search(q, 10, query_cut=base, threads=2)[0], truth)
        row.append(f"{mult}x np {c.n_postings} qc {c.query_cut}: {r:.3f} (base qc {base}: {rb:.3f})")
    print(ds.name, " | ".join(row), flush=True)
