import os, sys, time, re
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import numpy as np, seismic
from jobs.bench_index import real_collections, SeismicQueries, captured_stdout
from pipeline.index import ExactIndex, recall_at_k
only = sys.argv[1]
ds = real_collections("cisi,scifact,vaswani", "/work/cache", "", with_union=True, only=only)[0]
d = ds.docs; Q = ds.queries
truth = ExactIndex(d).search(Q, 10)[0]
from pipeline.index import BlockedIndex
npost = BlockedIndex.build(d).config.n_postings
print("n_postings (our derived)", npost)
dataset = seismic.SeismicDataset(dim=d.shape[1])
dataset.add_documents_by_id([str(i) for i in range(d.shape[0])], d.indices.astype(np.int64),
                            d.data.astype(np.float32), d.indptr.astype(np.int64))
for nknn in (10,):
    t = time.perf_counter()
    with captured_stdout():
        ix = seismic.SeismicIndex.build_from_dataset(dataset, n_postings=npost, centroid_fraction=0.1,
              summary_energy=0.4, nknn=nknn, num_threads=1)
    bs = time.perf_counter() - t
    with captured_stdout() as out:
        ix.print_space_usage_byte()
    mem = re.search(r"Total:\s*(\d+)\s*Bytes", out["text"]).group(1)
    print(f"nknn {nknn}: reported memory {int(mem)/1e6:.2f} MB", flush=True)
    sq = SeismicQueries(ix, Q, 10)
    for qc, hf in ((5, 1.0), (6, 0.9), (8, 0.9), (8, 0.8), (10, 0.9)):
        for nk in ((0, 5, 10) if nknn else (0,)):
            st = seismic.get_seismic_string()
            res = ix.batch_search(sq.ids, sq.comps, sq.vals, 10, qc, hf, n_knn=nk, num_threads=1)
            out = np.full((Q.shape[0], 10), -1, np.int64)
            for r in res:
                if r: out[int(r[0][0]), :len(r)] = [int(x[2]) for x in r]
            print(f"  qc {qc} hf {hf} n_knn {nk}: R {recall_at_k(out, truth):.4f}", flush=True)
