"""Where a decode token goes in (a)'s tiered setting (12 layers x 512 experts, VRAM budget scaled from 24 GB, uniform
routing, misses copied from the registered page cache): wall per token, CPU time in the tier's miss handling, and
torch.profiler's CPU and GPU tables over two tokens.
    python3 bench/device/gpu_dma_profile.py /tmp/a12 > profile.txt"""
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fmoe.bench.stream_cuda import RouteReplay, scaled_gpu_budget
from fmoe.engine.device_experts import DeviceExperts
from fmoe.engine.model import Model

path, k = sys.argv[1], 10
m = Model.load(path, backend="torch", dtype="bfloat16", device="cuda", experts_per_token=k,
               stream={"mode": "page-cache", "memory_budget": 0}, predict_experts=False,
               gpu_memory_budget=scaled_gpu_budget(24 * 10**9, 12))
L, E = m.cfg.num_hidden_layers, m.cfg.num_experts
rng = np.random.default_rng(0)
route = np.stack([[rng.choice(E, k, replace=False) for _ in range(L)] for _ in range(64)])
m.set_route_override(RouteReplay(route))
spent = {"ensure": 0.0, "calls": 0}
real = DeviceExperts._ensure


def timed(self, *a, **kw):
    t0 = time.perf_counter()
    try:
        return real(self, *a, **kw)
    finally:
        spent["ensure"] += time.perf_counter() - t0
        spent["calls"] += 1


DeviceExperts._ensure = timed
c = m.new_cache()
tok = int(m.forward([5], c).argmax())
for _ in range(4):
    tok = int(m.forward([tok], c).argmax())
torch.cuda.synchronize()
spent.update(ensure=0.0, calls=0)
times = []
for _ in range(8):
    t0 = time.perf_counter()
    tok = int(m.forward([tok], c).argmax())
    times.append(time.perf_counter() - t0)
print(f"ms/token: median {1e3 * np.median(times):.2f}, all {[round(1e3 * t, 1) for t in times]}")
print(f"miss handling (_ensure) {1e3 * spent['ensure'] / 8:.2f} ms/token over {spent['calls'] / 8:.0f} calls")
print({k: v for k, v in m.experts.stats().items() if k.startswith("device_")})
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(2):
        tok = int(m.forward([tok], c).argmax())
    torch.cuda.synchronize()
ka = prof.key_averages()
print(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
print(ka.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
m.close()
