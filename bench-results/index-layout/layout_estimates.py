import sys, numpy as np, scipy.sparse as sp
sys.path.insert(0, '.')
from jobs.bench_index import load_real
from pipeline.index.blocked import BlockedIndex
from pipeline.testing import synthetic
def layouts(name, docs):
    ix = BlockedIndex.build(docs)
    a = ix.arrays() if callable(getattr(ix,'arrays',None)) else ix._arrays
    rec = a['pair_records']; R = 3
    T = rec.size // R; E = a['entries'].size
    terms = rec[0::R].astype(np.int64) | (rec[1::R].astype(np.int64) << 8)
    cnt = rec[2::R].astype(np.int64) + 1
    sp_ = a['seg_pair_ptr']; sb = a['seg_block_ptr']; S = sp_.size-1
    nb = np.diff(sb)
    first = np.zeros(T, bool); first[sp_[:-1][np.diff(sp_)>0]] = True
    d = np.diff(terms, prepend=0); d[first] = 0
    esc = ((d > 255) & ~first).sum()
    segpairs = np.diff(sp_)
    groups_aligned = np.ceil(segpairs/16).sum()
    # bits per block id per segment
    w = np.ceil(np.log2(np.maximum(nb,1))).astype(int)
    seg_entries = np.add.reduceat(np.r_[cnt,0], sp_[:-1])[:S] if T else 0
    seg_entries = np.where(segpairs>0, seg_entries, 0)
    other = sum(v.nbytes for k,v in a.items() if k not in ('pair_records','pair_group_base','entries'))
    A = rec.nbytes + a['pair_group_base'].nbytes + a['entries'].nbytes
    B = 2*E + 2*T + 4*np.ceil(T/16)
    C = 2*E + T + 2*esc + 10*groups_aligned
    Dbits = (8*E + (w*seg_entries).sum())/8 + 2*T + 4*np.ceil(T/16) + T/2  # codes + packed blocks + term + base + 4-bit count
    print(f"{name}: T {T/1e6:.2f}M E {E/1e6:.2f}M e/p {E/T:.2f} esc {esc/T:.3f}; other {other/1e6:.1f} MB; "
          f"A {A/1e6:.1f} ({A/E:.2f} B/e)  B {B/1e6:.1f} ({B/E:.2f})  C {C/1e6:.1f} ({C/E:.2f})  D {Dbits/1e6:.1f} ({Dbits/E:.2f}) mean w {(w*seg_entries).sum()/E:.2f}")
for name in sys.argv[1:]:
    if name.startswith('syn'):
        n = int(name[3:]); d, q = synthetic.generate(n, 10, 0)
        layouts(name, d)
    else:
        ds = load_real(name, '/work/cache', '../shared/data'); layouts(name, ds.docs)
