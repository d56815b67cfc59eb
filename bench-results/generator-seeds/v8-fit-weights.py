"""Refit the weight quantile tables so pooled generated weights match the real union's."""
import sys, json, dataclasses
sys.path.insert(0, "/work/main")
import numpy as np
from jobs.bench_index import load_real, union
from pipeline.testing import synthetic as S
real = union([load_real(n, "/work/cache", "") for n in ("cisi", "scifact", "vaswani")])
P = S.WEIGHT_PROBS
inner = P[1:-1]
td = np.quantile(real.docs.data, inner); tq = np.quantile(real.queries.data, inner)
print("real doc q", np.round(td, 4).tolist()); print("real query q", np.round(tq, 4).tolist())
params = S.params_from_json(sys.argv[1])
D, Q = S.DOC_WEIGHT_QUANTILES.copy(), S.QUERY_WEIGHT_QUANTILES.copy()
for it in range(int(sys.argv[2]) if len(sys.argv) > 2 else 6):
    S.DOC_WEIGHT_QUANTILES[:] = D; S.QUERY_WEIGHT_QUANTILES[:] = Q
    d, q = S.generate(18072, 1314, 0, params=params)
    ad, aq = np.quantile(d.data, inner), np.quantile(q.data, inner)
    print(it, "doc", np.round(ad / td - 1, 3).tolist(), "query", np.round(aq / tq - 1, 3).tolist(), flush=True)
    D[1:-1] *= (td / ad); Q[1:-1] *= (tq / aq)
    D[-1] = max(D[-1], D[-2] * 1.05); Q[-1] = max(Q[-1], Q[-2] * 1.05)
print("DOC", np.round(D, 6).tolist()); print("QUERY", np.round(Q, 6).tolist())
if len(sys.argv) > 3:
    json.dump({"DOC": np.round(D, 6).tolist(), "QUERY": np.round(Q, 6).tolist()}, open(sys.argv[3], "w"))
