"""Recall-only generator calibration loop: real grid once, then each setting (ours only)."""
import sys, json, time, dataclasses, pickle, os
sys.path.insert(0, '/work/main'); sys.path.insert(0, '/work/main/jobs')
import numpy as np
import bench_generator as bg
from bench_index import load_real, union, Dataset
from pipeline.index import ExactIndex
from pipeline.testing import synthetic
libs = tuple(os.environ.get("LIBS", "blocked").split(","))
seed = int(os.environ.get("SEED", "0"))
searches = [{"query_cut": int(c), "heap_factor": h} for c, h in
            [tuple(map(float, s.split(":"))) for s in bg.SEARCHES.split(",")]]
fr = [0.5, 1.0, 2.0]
cache = f"/tmp/gl/real12-{'-'.join(libs)}.pkl"
real = union([load_real(n, "/work/cache", "/work/shared/data") for n in "cisi,scifact,vaswani".split(",")])
real.name = "real"
if os.path.exists(cache):
    rp = pickle.load(open(cache, "rb"))
else:
    tr = ExactIndex(real.docs).search(real.queries, k=10, threads=2)[0]
    rp = bg.measure((real,), (tr,), fr, searches, 10, 300, 1, 2, True, libs)["real"]
    pickle.dump(rp, open(cache, "wb"))
keys = ("doc_nnz_mean", "query_nnz_mean", "df_rank_1", "df_rank_10", "df_rank_100", "df_rank_1000",
        "overlap_top1", "overlap_top10", "overlap_random", "vocab_used_share", "score10_over_score1")
import io, contextlib
if os.environ.get("TABLES"):
    t_ = json.load(open(os.environ["TABLES"]))
    synthetic.DOC_WEIGHT_QUANTILES[:] = t_["DOC"]; synthetic.QUERY_WEIGHT_QUANTILES[:] = t_["QUERY"]
for arg in sys.argv[1:]:
    t = time.time()
    ov = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(arg).items()}
    params = dataclasses.replace(synthetic.SyntheticParams(), **ov)
    st = synthetic.describe(*synthetic.generate(18072, 300, seed=1, params=params))
    tg = synthetic.CALIBRATION_TARGETS
    dev = {k: round(st[k] / tg[k] - 1, 3) for k in keys}
    bad = [k for k in keys[:-1] if abs(dev[k]) > 0.2]
    d, q = synthetic.generate(real.docs.shape[0], real.queries.shape[0], seed, real.docs.shape[1], params=params)
    syn = Dataset("synthetic", d, q, "s")
    tr = ExactIndex(d).search(q, k=10, threads=2)[0]
    with contextlib.redirect_stdout(io.StringIO()):
        sp_ = bg.measure((syn,), (tr,), fr, searches, 10, 300, 1, 2, True, libs)["synthetic"]
    for lib in libs:
        R = {(p["fraction"], p["search"].get("query_cut"), p["search"].get("heap_factor")): p["recall"] for p in rp if p["library"] == lib}
        S = {(p["fraction"], p["search"].get("query_cut"), p["search"].get("heap_factor")): p["recall"] for p in sp_ if p["library"] == lib}
        diffs = {k: S[k] - R[k] for k in R if k[0] != "derived"}
        over = {k: v for k, v in diffs.items() if abs(v) > 0.03}
        print(f"{lib} {arg}: {len(diffs)-len(over)}/{len(diffs)} max {max(abs(v) for v in diffs.values()):.3f} "
              f"mean {np.mean(list(diffs.values())):+.3f} over " +
              " ".join(f"{k[0]}/{k[1]}/{k[2]}:{R[k]:.3f}->{S[k]:.3f}" for k in over), flush=True)
        byh = {}
        for k_, v in diffs.items(): byh.setdefault(k_[2], []).append(v)
        print("   mean by hf " + " ".join(f"{h}:{np.mean(v):+.4f}" for h, v in sorted(byh.items())), flush=True)
        print("   key " + " ".join(f"{k[0]}/{k[1]}/{k[2]}:{R[k]:.3f}->{S[k]:.3f}" for k in R if k in [(2.0,10,0.8),(2.0,10,1.0),(1.0,10,0.8),(2.0,20,1.0),(1.0,20,0.8)]))
    lists = np.bincount(d.indices, minlength=d.shape[1])
    print(f"   weights doc median {np.median(d.data):.3f} (real 0.529) mean {d.data.mean():.3f} (0.681) query median {np.median(q.data):.3f} (0.557); mean used list {d.nnz/(lists>0).sum():.1f} (141.2)")
    print(f"   stats {'OK' if not bad else 'FAIL ' + ','.join(bad)} {dev} {time.time()-t:.0f}s", flush=True)
