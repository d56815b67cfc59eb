"""Per collection: documents scored to reach recall@10 0.95 / 0.98, searching deeper vs
searching then refining the top-k through an exact kNN graph (kappa neighbours each).
Counts only."""
import sys, os
os.environ["SKIP_GRID"] = "1"
import numpy as np
only = sys.argv[1]
sys.argv = [sys.argv[0], only]
# reuse the experiment's setup (graph, index, refine, scored_sets) without its loops
src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "knn_exp.py")).read().split("print(\"actual extra")[0]
src = src.replace("KAPPA = 30", "KAPPA = 20")
exec(compile(src, "knn_exp", "exec"))
pts = {"plain": [], "k5": [], "k10": [], "k20": []}
for qc in (3, 4, 5, 6, 7, 8, 10, 12, 15, 20):
    for hf in (0.6, 0.7, 0.8, 0.9, 1.0):
        docs, counts, _ = counted_search(idx, Q, qc, hf)
        seen = scored_sets(qc, hf)
        pts["plain"].append((counts[1], recall_at_k(docs, truth), f"{qc}:{hf}"))
        for kappa in (5, 10, 20):
            rd, _ = refine(docs, kappa)
            extra = np.mean([len(set(G[docs[qi][docs[qi] >= 0], :kappa].ravel().tolist()) - seen[qi])
                             for qi in range(Q.shape[0])])
            pts[f"k{kappa}"].append((counts[1] + extra, recall_at_k(rd, truth), f"{qc}:{hf}"))
for target in (0.95, 0.98):
    line = f"{only} >= {target}:"
    base = None
    for name, p in pts.items():
        ok = [x for x in p if x[1] >= target]
        best = min(ok) if ok else None
        if best is None:
            line += f" {name} none |"; continue
        if name == "plain": base = best[0]
        line += f" {name} {best[0]:.0f} docs ({best[2]}, R {best[1]:.4f}, {best[0]/base:.3f}) |"
    print(line, flush=True)
