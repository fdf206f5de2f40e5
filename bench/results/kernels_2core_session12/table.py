"""Summarize A/B JSON files: us per mat-vec (cold) and hot GB/s per shape, per variant and round."""
import json, sys, glob, re, os
d = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    m = re.match(r"([a-z0-9]+?)(\d+)_t(\d)\.json", os.path.basename(f))
    if not m: continue
    v, r, t = m.groups()
    j = json.load(open(f))
    for b, bj in j["bits"].items():
        for s, sj in bj["shapes"].items():
            rows.setdefault((t, b, s, v), []).append((int(r), sj["us_per_matvec"], sj.get("hot_gbps"), sj["ratio"]))
        rows.setdefault((t, b, "headline", v), []).append((int(r), bj["us_per_matvec"], bj.get("hot_gbps"), bj["ratio"]))
for k in sorted(rows):
    vals = sorted(rows[k])
    print(f"t{k[0]} {k[1]}-bit {k[2]:20s} {k[3]:8s} us: " + ", ".join(f"{u:.0f}" for _, u, _, _ in vals)
          + " | ratio: " + ", ".join(f"{q:.2f}" for _, _, _, q in vals)
          + " | hot GB/s: " + ", ".join(f"{h:.1f}" for _, _, h, _ in vals if h))
