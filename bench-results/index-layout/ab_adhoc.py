import sys, time, numpy as np, scipy.sparse as sp
root = sys.argv[1]; sys.path.insert(0, root); sys.path.insert(1, '/work/main')
from jobs.bench_index import load_real
from pipeline.index.blocked import BlockedIndex
import pipeline.index.blocked as B
assert B.__file__.startswith(root)
points = [(None, None), (6, 0.8), (10, 1.0)]
dss = [load_real(n, '/work/cache', '/work/shared/data') for n in ('cisi', 'scifact', 'vaswani')]
docs = sp.vstack([d.docs for d in dss]).tocsr(); qs = sp.vstack([d.queries for d in dss]).tocsr()
dss.append(type(dss[0])('union', docs, qs, ''))
line = [root.split('/')[-1]]
for ds in dss:
    ix = BlockedIndex.build(ds.docs)
    q = ds.queries
    for qc, hf in points:
        ix.search(q, 10, query_cut=qc, heap_factor=hf, threads=1)
        best = np.full(q.shape[0], np.inf)
        for r in range(3):
            for i in range(q.shape[0]):
                t = time.perf_counter(); ix.search(q[i], 10, query_cut=qc, heap_factor=hf, threads=1)
                best[i] = min(best[i], time.perf_counter() - t)
        bt = min((lambda t0: (ix.search(q, 10, query_cut=qc, heap_factor=hf, threads=1), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(3))
        line.append(f"{ds.name}@{qc}:{hf} single {best.mean()*1e6:.0f} batch1 {bt/q.shape[0]*1e6:.0f}")
print(' | '.join(line), flush=True)
