"""Which factor of S_d / kth = fidelity x (score_d / kth) makes real vectors lose more at heap_factor 1.0:
each factor's distribution swapped between the real union and synthetic vectors (pairs saved by v8-coverage.py)."""
import numpy as np
R = np.load("/tmp/mc/pairs-real.npz"); S = np.load("/tmp/mc/pairs-synth.npz")
def share(f, s): x = f * s; return ((x >= 0.8) & (x < 1)).mean(), (x < 0.8).mean()
rng = np.random.default_rng(0)
print("share of top-10 pairs with S_d/kth in [0.8, 1), and under 0.8")
print("real", np.round(share(R["fid"], R["sk"]), 4), "synthetic", np.round(share(S["fid"], S["sk"]), 4))
for name, f, s in (("real fidelity x synthetic score/kth", R["fid"], S["sk"]),
                   ("synthetic fidelity x real score/kth", S["fid"], R["sk"])):
    n = min(f.size, s.size)
    print(name, np.round(np.mean([share(rng.choice(f, n), rng.choice(s, n)) for _ in range(20)], 0), 4))
for r in (0, 4, 9):
    m, n = R["rank"] == r, S["rank"] == r
    print(f"rank {r}: score/kth median real {np.median(R['sk'][m]):.3f} synthetic {np.median(S['sk'][n]):.3f}; "
          f"fidelity median real {np.median(R['fid'][m]):.3f} synthetic {np.median(S['fid'][n]):.3f}")
