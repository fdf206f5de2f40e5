"""Sweep the grouped mat-vec's launch configurations on the 397B decode shapes (issue 13: pick the per-shape config
from measurements). GB/s of weight bytes read per launch against the HBM read bandwidth measured in the same run
(a float32 sum over 2 GiB). Rotates over enough distinct slots / copies that the 50 MB L2 cannot serve the reads.
    python3 bench/device/qmv_sweep.py OUT.json"""
import itertools
import json
import sys

import numpy as np
import torch

from fmoe.kernels import triton_qmv

dev = "cuda"
torch.manual_seed(0)


def hbm_read():
    a = torch.ones(2 << 28, dtype=torch.float32, device=dev)
    best = 1e9
    for _ in range(5):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); a.sum(); e.record(); e.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3)
    return a.numel() * 4 / best / 1e9


def table(slots, n_out, n_in, bits=4, group=64):
    w = torch.randint(-2**31, 2**31 - 1, (slots, n_out, n_in * bits // 32), dtype=torch.int32, device=dev)
    s = (torch.rand(slots, n_out, n_in // group, device=dev) * 0.01).to(torch.bfloat16)
    b = (torch.randn(slots, n_out, n_in // group, device=dev) * 0.01).to(torch.bfloat16)
    return w, s, b


SHAPES = {   # name: (n_out, n_in, rows per launch, shared x, slots in the table)
    "expert_gate_up_k11": (1024, 4096, 11, True, 96),
    "expert_down_k11": (4096, 1024, 11, False, 96),
    "deltanet_in_proj": (20608, 4096, 1, True, 8),
    "attn_qkv": (17408, 4096, 1, True, 8),
    "out_proj": (4096, 8192, 1, True, 16),
    "lm_head": (248320, 4096, 1, True, 1),
}
CONFIGS = [dict(block_n=bn, block_k=bk, num_warps=nw)
           for bn, bk, nw in itertools.product((2, 4, 8, 16, 32), (512, 1024, 2048), (1, 2, 4, 8))]
hbm = hbm_read()
out = {"hbm_read_gbps": hbm, "gpu": torch.cuda.get_device_name(), "results": {}}
print(json.dumps({"hbm_read_gbps": round(hbm, 1)}), flush=True)
for name, (n_out, n_in, R, shared, S) in SHAPES.items():
    w, s, b = table(S, n_out, n_in)
    x = torch.randn(1 if shared else R, n_in, device=dev, dtype=torch.bfloat16 if shared else torch.float32)
    nbytes = R * (n_out * n_in // 2 + 2 * 2 * n_out * n_in // 64)
    rot = max(1, S // R)
    slot_sets = [torch.arange(i * R, i * R + R, device=dev, dtype=torch.int32) % S for i in range(rot)]
    res = []
    for cfg in CONFIGS:
        try:
            for st in slot_sets[:2]:
                triton_qmv.grouped_qmv(x, w, s, b, st, 4, 64, **cfg)
            torch.cuda.synchronize()
            reps = 20 if name != "lm_head" else 10
            g = torch.cuda.CUDAGraph()          # timed inside a graph: GPU time, not the Python launcher's
            with torch.cuda.graph(g):
                for i in range(reps):
                    triton_qmv.grouped_qmv(x, w, s, b, slot_sets[i % rot], 4, 64, **cfg)
            g.replay(); torch.cuda.synchronize()
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
            g.replay()
            ev[1].record(); ev[1].synchronize()
            t = ev[0].elapsed_time(ev[1]) / 1e3 / reps
            res.append({**cfg, "us": round(t * 1e6, 2), "gbps": round(nbytes / t / 1e9, 1),
                        "fraction_of_hbm": round(nbytes / t / 1e9 / hbm, 3)})
        except Exception as e:  # noqa: BLE001
            res.append({**cfg, "error": f"{type(e).__name__}: {str(e)[:120]}"})
    res.sort(key=lambda r: r.get("us", 1e18))
    out["results"][name] = res
    print(json.dumps({"shape": name, "best": res[0], "default": next(r for r in res if r["block_n"] == 8 and r["block_k"] == 1024 and r["num_warps"] == 2)}), flush=True)
    del w, s, b
json.dump(out, open(sys.argv[1], "w"), indent=1)
