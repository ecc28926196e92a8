#!/usr/bin/env python3
"""Prints, per case of a compare.py CSV, normkit's time, the best peer on the same layout and
the ratio (peer / normkit, > 1 = normkit faster), against oneDNN blocked (blk r) and the
ratio to the same-size copy/add (xcopy, < 1 = faster than the memory pass).

    python3 bench/summary.py [bench/results/latest.csv]
"""
import csv,collections,sys
rows=list(csv.DictReader(open(sys.argv[1] if len(sys.argv)>1 else 'bench/results/latest.csv')))
d=collections.defaultdict(dict)
for r in rows:
    try: d[(r['op'],r['pass'],r['shape'],r['threads'])][(r['layout'],r['impl'])]=float(r['median_us'])
    except: pass
for k,v in sorted(d.items()):
    for lay in ('nchw','nhwc','rows'):
        if (lay,'normkit') not in v: continue
        nk=v[(lay,'normkit')]
        peers={i:t for (l,i),t in v.items() if l==lay and i!='normkit'}
        blk=v.get(('blocked','onednn'))
        best=min(peers.values()) if peers else None
        s=f"{k[0]:4} {k[1]:10} {k[2]:14} {k[3]} {lay:5} nk={nk:9.1f} "
        s+= f"bestpeer={best:9.1f} r={best/nk:5.2f}" if best else " "*26
        s+=f" blk r={blk/nk:5.2f}" if blk else " "*12
        cp=[t for (l,i),t in v.items() if i in('copy','add')]
        if cp: s+=f" xcopy={nk/cp[0]:5.2f}"
        print(s)
