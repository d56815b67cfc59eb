"""Load one library's saved union index and run N queries through its one-thread batch call
(argv: ours|seismic N qc hf). Run under cachegrind with N=0 and N=300 and subtract."""
import sys, os, json
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"
sys.path.insert(0, "/work/main")
import numpy as np
from jobs.bench_index import real_collections, SeismicQueries
lib, n, qc, hf = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ds = real_collections("cisi,scifact,vaswani", "/work/cache", "", True, "union")[0]
s = {"query_cut": qc, "heap_factor": hf}
if lib == "ours":
    from pipeline.index import BlockedIndex
    from pipeline.index.config import BlockedIndexConfig
    meta = json.load(open("/tmp/cg/ours.json"))
    z = np.load("/tmp/cg/ours.npz")
    cfg = BlockedIndexConfig(**meta["config"])
    ix = BlockedIndex.from_arrays({k: z[k] for k in z.files}, cfg, meta["n_docs"], meta["vocab"], meta["nnz"])
    q = ds.queries
    ix.search(q[:2], k=10, query_cut=qc, heap_factor=hf, threads=1)   # compile / load cache
    if n:
        d, _ = ix.search(q[:n], k=10, query_cut=qc, heap_factor=hf, threads=1)
else:
    import seismic
    idx = seismic.SeismicIndex.load("/tmp/cg/seismic.index.seismic") if os.path.exists("/tmp/cg/seismic.index.seismic") else seismic.SeismicIndex.load("/tmp/cg/seismic")
    sq = SeismicQueries(idx, ds.queries, 10)
    sq.batch(s, 2, 1)
    if n:
        d = sq.batch(s, n, 1)
if n:
    print("result rows", d.shape, int((d >= 0).sum()))
