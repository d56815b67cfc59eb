"""Native, one thread: ours and Seismic at the same build (the union's derived 353/0.1/0.4)
and search point, interleaved query by query (best of 3 passes), with recall@10 and our
per-query work counted."""
import sys, os, json
os.environ["RAYON_NUM_THREADS"] = "1"
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/jobs")
import numpy as np
import seismic
from jobs.bench_index import real_collections, SeismicQueries, interleaved
from jobs.index_sweep import counted_search
from pipeline.index import BlockedIndex, ExactIndex, recall_at_k
from pipeline.index.config import BlockedIndexConfig
ds = real_collections("cisi,scifact,vaswani", "/work/cache", "", True, "union")[0]
meta = json.load(open("/tmp/cg/ours.json")); z = np.load("/tmp/cg/ours.npz")
ix = BlockedIndex.from_arrays({k: z[k] for k in z.files}, BlockedIndexConfig(**meta["config"]),
                              meta["n_docs"], meta["vocab"], meta["nnz"])
sq = SeismicQueries(seismic.SeismicIndex.load("/tmp/cg/seismic.index.seismic"), ds.queries, 10)
truth = ExactIndex(ds.docs).search(ds.queries, k=10)[0]
n = 300
rows = [ds.queries[i] for i in range(n)]
for qc, hf in ((8, 0.8), (8, 1.0), (6, 0.8)):
    s = {"query_cut": qc, "heap_factor": hf}
    ours_r = recall_at_k(ix.search(ds.queries, k=10, query_cut=qc, heap_factor=hf, threads=1)[0], truth)
    theirs_r = recall_at_k(sq.batch(s, ds.queries.shape[0], 1), truth)
    _, counts, _ = counted_search(ix, ds.queries[:n], qc, hf)
    a, b = interleaved([lambda i: ix.search(rows[i], k=10, query_cut=qc, heap_factor=hf),
                        lambda i: sq.one(i, s)], n, 3)
    print(f"qc {qc} hf {hf}: recall ours {ours_r:.4f} seismic {theirs_r:.4f}; "
          f"us ours {a.mean():.1f} seismic {b.mean():.1f} ratio {a.mean()/b.mean():.2f}; "
          f"ours per query: blocks {counts[0]:.0f} docs {counts[1]:.0f} entries {counts[2]:.0f}", flush=True)
