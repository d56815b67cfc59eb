import re, sys
rows={}
for f in sys.argv[1:]:
    for line in open(f):
        m=re.search(r"^(\w+) n_postings=(\d+) .*qc=(\d+) hf=([\d.]+): R@10 ([\d.]+)\s+blocks (\d+)\s+docs (\d+)\s+entries (\d+)\s+mem ([\d.]+) MB.*counting pass (\d+) us",line)
        if not m: continue
        c,npst,qc,hf,r,bl,docs,ent,mem,t=m.groups()
        rows.setdefault((c,int(npst)),[]).append((float(r),int(ent),int(bl),int(t),qc,hf,float(mem)))
for (c,npst),pts in sorted(rows.items()):
    out=[]
    for tgt in (0.95,0.98):
        ok=[p for p in pts if p[0]>=tgt]
        e=min(ok,key=lambda p:p[1]) if ok else None
        out.append(f">={tgt}: " + (f"qc{e[4]} hf{e[5]} R{e[0]:.3f} ent {e[1]//1000}k blocks {e[2]} t{e[3]}" if e else "none"))
    print(f"{c:8s} {npst:4d} {pts[0][6]:6.1f} MB | " + " | ".join(out))
