"""Build our union index (defaults) and Seismic's at the same build parameters; save both."""
import sys, os, json
os.environ["RAYON_NUM_THREADS"] = "1"
sys.path.insert(0, "/work/main")
import numpy as np
from jobs.bench_index import real_collections, seismic_index
from pipeline.index import BlockedIndex
ds = real_collections("cisi,scifact,vaswani", "/work/cache", "", True, "union")[0]
ix = BlockedIndex.build(ds.docs)
c = ix.config
np.savez("/tmp/cg/ours.npz", **ix.arrays())
json.dump({"n_docs": ix.n_docs, "vocab": ix.vocab_size, "nnz": ix.nnz,
           "config": {k: getattr(c, k) for k in ("n_postings", "centroid_fraction", "summary_energy", "query_cut", "heap_factor")}},
          open("/tmp/cg/ours.json", "w"))
s, _, mem = seismic_index(ds, {"n_postings": c.n_postings, "centroid_fraction": c.centroid_fraction,
                               "summary_energy": c.summary_energy, "max_fraction": 1.5}, 1)
s.save("/tmp/cg/seismic")
print(c, mem, ix.nbytes)
