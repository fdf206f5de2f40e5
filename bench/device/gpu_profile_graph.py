"""Where a CUDA decode token goes with every expert in VRAM (issue 13): kernels per token and GPU time by kernel,
from torch.profiler over eager steps, and the replayed graph's time per token from CUDA events.
    python3 bench/device/gpu_profile_graph.py /tmp/s12"""
import json
import os
import sys
from collections import defaultdict

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fmoe.engine.model import Model

path = sys.argv[1]
os.environ["FMOE_CUDA_GRAPH"] = "1"
m = Model.load(path, backend="torch", dtype="bfloat16", device="cuda", stream={"mode": "page-cache"})
c = m.new_cache()
m.forward(list(range(1, 33)), c)
tok = 5
for _ in range(6):
    tok = int(m.forward([tok], c).argmax())
g = m._graph
torch.cuda.synchronize()
t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
t0.record()
for _ in range(50):
    g.graph.replay()
t1.record()
torch.cuda.synchronize()
replay_ms = t0.elapsed_time(t1) / 50
nodes = None
try:
    import ctypes  # noqa: F401
    nodes = g.graph.raw_cuda_graph() if hasattr(g.graph, "raw_cuda_graph") else None
except Exception:  # noqa: BLE001
    pass
os.environ["FMOE_CUDA_GRAPH"] = "0"
m._graph = False
for _ in range(3):
    tok = int(m.forward([tok], c).argmax())
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        tok = int(m.forward([tok], c).argmax())
    torch.cuda.synchronize()
by = defaultdict(lambda: [0, 0.0])
for e in prof.events():
    if e.device_type == torch.autograd.DeviceType.CUDA:
        name = e.name[:90]
        by[name][0] += 1
        by[name][1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
rows = sorted(by.items(), key=lambda kv: -kv[1][1])
total_n = sum(v[0] for v in by.values()) / 5
total_us = sum(v[1] for v in by.values()) / 5
print(json.dumps({"graph_replay_ms_per_token": round(replay_ms, 3), "kernels_per_token": total_n,
                  "gpu_busy_ms_per_token_eager": round(total_us / 1e3, 3), "layers": m.cfg.num_hidden_layers}))
for name, (n, us) in rows[:40]:
    print(f"{n / 5:8.1f} per token {us / 5:9.1f} us/token  {us / max(n, 1):7.2f} us each  {name}")
