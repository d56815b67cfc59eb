"""A/B at 1M (12 shards of 100k, the scale harness's index kept): search with the index's
derived query_cut (10 since the widened-cut rule) against query_cut 8 (the rule before it),
same opened index, same encoded scifact queries, interleaved per query, one thread."""
import json, sys, time
import numpy as np
sys.path.insert(0, "/work/main")
from pipeline.encode.query import set_torch_threads
from pipeline.index import recall_at_k
from pipeline.search import ShardedIndex

url = sys.argv[1]
set_torch_threads(1)
texts = [json.loads(l)["text"] for l in open("/work/shared/data/scifact/queries.jsonl")][:300]
index = ShardedIndex.open(url)
enc = index.encoder()
vecs = enc.encode_queries(texts)
exact, _ = index.search_rows(vecs, k=10, exact=True, threads=None)
settings = {"derived (qc 10)": {}, "qc 8": {"query_cut": 8}}
for p in settings.values():
    for i in range(30):
        index.search_rows(vecs[i], k=10, threads=1, **p)
times = {n: [] for n in settings}
for rnd in range(3):
    for i in range(vecs.shape[0]):
        order = list(settings.items()) if (i + rnd) % 2 == 0 else list(settings.items())[::-1]
        for name, p in order:
            t0 = time.perf_counter()
            index.search_rows(vecs[i], k=10, threads=1, **p)
            times[name].append((time.perf_counter() - t0) * 1000)
for name, p in settings.items():
    got, _ = index.search_rows(vecs, k=10, threads=1, **p)
    t = np.array(times[name])
    print(f"{name}: recall@10 {recall_at_k(got, exact):.4f}  search p50 {np.percentile(t, 50):.3f} ms  p99 {np.percentile(t, 99):.3f} ms  mean {t.mean():.3f} ms  (n {t.size})")
print("shard query_cut values:", sorted({s.index.config.query_cut for s in index.shards} if hasattr(index, "shards") else []))
