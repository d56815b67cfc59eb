"""Ad-hoc: does a block-local physical order of the forward index speed search? Same blocks,
same results; only fwd_words' document order and the postings' offsets change."""
import sys, time, os
sys.path.insert(0, "/work/main")
import numpy as np, scipy.sparse as sp
from jobs.bench_index import real_collections
from pipeline.index import BlockedIndex
from pipeline.index.blocked import kernel_view
from pipeline.testing import synthetic

def reordered(ix, order):
    a = dict(ix.arrays())
    words = a["fwd_words"]
    n = ix.n_docs
    from pipeline.index import search_kernels as sk
    start = sk.forward_starts(words, n)
    lens = words[start + 1].astype(np.int64) + 2
    new_start = np.zeros(n, np.int64)
    new_start[order] = np.concatenate([[0], np.cumsum(lens[order])[:-1]])
    new_words = np.empty_like(words)
    # copy docs
    idx = np.concatenate([np.arange(s, s + l) for s, l in zip(start[order], lens[order])])
    new_words[:] = words[idx]
    # postings: old offset -> doc -> new offset
    docs_of = words[a["postings"].astype(np.int64)].astype(np.int64)
    newp = new_start[docs_of]
    # sort within blocks by new offset
    bp = a["block_post_ptr"].astype(np.int64)
    blk = np.repeat(np.arange(bp.size - 1), np.diff(bp))
    o = np.lexsort((newp, blk))
    a["fwd_words"] = new_words
    a["postings"] = newp[o].astype(np.uint32)
    return BlockedIndex(a, ix.config, n, ix.vocab_size, ix.nnz)

def order_by_heaviest_block(ix, docs):
    a = ix.arrays()
    words = a["fwd_words"]
    heavy = np.asarray(docs.argmax(axis=1)).ravel()
    lbp = a["list_block_ptr"]; bp = a["block_post_ptr"].astype(np.int64)
    nb = bp.size - 1
    block_list = np.repeat(np.arange(lbp.size - 1), np.diff(lbp))
    post_block = np.repeat(np.arange(nb), np.diff(bp))
    post_doc = words[a["postings"].astype(np.int64)].astype(np.int64)
    key = np.full(ix.n_docs, np.iinfo(np.int64).max)
    m = block_list[post_block] == heavy[post_doc]
    np.minimum.at(key, post_doc[m], post_block[m])
    return np.lexsort((np.arange(ix.n_docs), key))

def main():
    which = sys.argv[1]
    qc, hf = int(sys.argv[2]), float(sys.argv[3])
    if which == "union":
        ds = real_collections("cisi,scifact,vaswani", "/work/cache", "", True, "union")[0]
        docs, queries = ds.docs, ds.queries
    else:
        docs, queries = synthetic.generate(int(which), 300, seed=0)
    t = time.time(); ix = BlockedIndex.build(docs); print("build", time.time() - t, ix.config)
    variants = {"orig": ix,
                "block": reordered(ix, order_by_heaviest_block(ix, docs)),
                "random": reordered(ix, np.random.default_rng(0).permutation(ix.n_docs))}
    qs = [queries[i] for i in range(queries.shape[0])]
    ref = None
    for name, v in variants.items():
        d, s = v.search(queries, k=10, query_cut=qc, heap_factor=hf)
        if ref is None: ref = (d, s)
        print(name, "identical", np.array_equal(d, ref[0]) and np.array_equal(s, ref[1]))
    best = {k: np.full(len(qs), np.inf) for k in variants}
    names = list(variants)
    for r in range(5):
        for i, q in enumerate(qs):
            for k in (names if (i + r) % 2 == 0 else names[::-1]):
                t = time.perf_counter()
                variants[k].search(q, k=10, query_cut=qc, heap_factor=hf)
                best[k][i] = min(best[k][i], time.perf_counter() - t)
    base = best["orig"].mean()
    for k in names:
        print(f"{k}: {best[k].mean()*1e6:.1f} us, ratio {best[k].mean()/base:.3f}")

main()
