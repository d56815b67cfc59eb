"""Where a best block's coverage comes from: real union vs synthetic (diagnostic)."""
import sys, json
sys.path.insert(0, "/work/main")
import numpy as np, scipy.sparse as sp
from jobs.bench_index import load_real, union
from jobs.summary_fidelity import summary_matrix
from pipeline.index import BlockedIndex
from pipeline.testing import synthetic

def measure(name, docs, queries, fraction=2.0, query_cut=5, n_queries=300, k=10):
    index = BlockedIndex.build(docs, n_postings=max(1, round(fraction * docs.nnz / docs.shape[1])),
                               centroid_fraction=0.1, summary_energy=0.4, max_fraction=1.5)
    summaries, posting_doc = summary_matrix(index)
    a = index.arrays(); lb, bp = a["list_block_ptr"], a["block_post_ptr"]
    exact = (queries[:n_queries] @ docs.T).toarray()
    norms = np.sqrt(np.asarray(docs.multiply(docs).sum(1)).ravel())
    st = {k_: [] for k_ in ("lack_mass", "lack_terms", "lack_in_summ", "lack_in_mates", "cov", "mate_cos", "block_size", "summ_len", "lack_w_summ", "fid", "sk", "rank")}
    for i in range(n_queries):
        q = queries[i]
        heaviest = q.indices[np.lexsort((np.arange(q.nnz), -q.data))[:query_cut]]
        blocks = np.concatenate([np.arange(lb[t], lb[t + 1]) for t in heaviest])
        top = np.argsort(-exact[i], kind="stable")[:k]
        if blocks.size == 0 or exact[i][top[-1]] <= 0: continue
        bs = np.asarray((summaries[blocks] @ q.T).todense()).ravel()
        best_s, best_b = {}, {}
        for b, s in zip(blocks, bs):
            for d in posting_doc[bp[b]:bp[b + 1]]:
                if s > best_s.get(d, -1.0): best_s[d], best_b[d] = s, b
        qt, qw = q.indices, q.data
        for d in top:
            if d not in best_b: continue
            b = best_b[d]; score = exact[i][d]
            dterms = docs.indices[docs.indptr[d]:docs.indptr[d+1]]
            lack = ~np.isin(qt, dterms)
            st["lack_mass"].append(qw[lack].sum() / qw.sum()); st["lack_terms"].append(lack.sum())
            row = summaries[b].toarray().ravel()
            insumm = row[qt[lack]] > 0
            st["lack_in_summ"].append(insumm.mean() if lack.any() else 0)
            mates = posting_doc[bp[b]:bp[b + 1]]; mates = mates[mates != d]
            M = docs[mates]
            inm = np.asarray((M[:, qt[lack]] > 0).sum(0)).ravel() > 0 if mates.size else np.zeros(lack.sum(), bool)
            st["lack_in_mates"].append(inm.mean() if lack.any() else 0)
            st["cov"].append((qw[lack] * row[qt[lack]]).sum() / score)
            st["lack_w_summ"].append(row[qt[lack]][insumm].mean() if insumm.any() else 0)
            if mates.size:
                cos = np.asarray((M @ docs[d].T).todense()).ravel() / (norms[mates] * norms[d])
                st["mate_cos"].append(cos.mean())
            kth = exact[i][top[-1]]
            st["fid"].append(best_s[d] / score); st["sk"].append(score / kth); st["rank"].append(int(np.flatnonzero(top == d)[0]))
            st["block_size"].append(mates.size + 1); st["summ_len"].append((row > 0).sum())
    np.savez(f"/tmp/mc/pairs-{name}.npz", **{k_: np.asarray(v) for k_, v in st.items() if k_ in ("fid", "sk", "rank")})
    print(name, {k_: (round(float(np.median(v)), 3), round(float(np.mean(v)), 3)) for k_, v in st.items()}, flush=True)

real = union([load_real(n, "/work/cache", "") for n in ("cisi", "scifact", "vaswani")])
overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
if "real" not in overrides.get("skip", []): measure("real", real.docs, real.queries)
overrides.pop("skip", None)
params = synthetic.params_from_json(json.dumps(overrides))
d, q = synthetic.generate(real.docs.shape[0], real.queries.shape[0], 0, params=params)
measure("synth", d, q)
