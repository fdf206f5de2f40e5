"""Where a decode token goes in (a)'s tiered setting (12 layers x 512 experts, VRAM budget scaled from 24 GB, uniform
routing, misses copied from the registered page cache), at top-4 and top-10: ms per token with the small index
copies through pinned memory (the engine) and from pageable memory (as before), alternated in one process, CPU time
in the tier's miss handling, and torch.profiler's CPU and GPU tables over two top-4 tokens.
    python3 bench/device/gpu_dma_profile.py /tmp/a12 > profile.txt"""
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fmoe.bench.stream_cuda import RouteReplay, scaled_gpu_budget
from fmoe.engine.device_experts import DeviceExperts
from fmoe.engine.model import Model

path = sys.argv[1]
spent = {"ensure": 0.0, "calls": 0}
real_ensure, pinned = DeviceExperts._ensure, DeviceExperts.to_device


def timed(self, *a, **kw):
    t0 = time.perf_counter()
    try:
        return real_ensure(self, *a, **kw)
    finally:
        spent["ensure"] += time.perf_counter() - t0
        spent["calls"] += 1


def pageable(self, values, dtype="int32"):
    return torch.as_tensor(np.asarray(values), dtype=getattr(torch, dtype)).to(self.device, non_blocking=True)


DeviceExperts._ensure = timed
for k in (4, 10):
    m = Model.load(path, backend="torch", dtype="bfloat16", device="cuda", experts_per_token=k,
                   stream={"mode": "page-cache", "memory_budget": 0}, predict_experts=False,
                   gpu_memory_budget=scaled_gpu_budget(24 * 10**9, 12))
    L, E = m.cfg.num_hidden_layers, m.cfg.num_experts
    rng = np.random.default_rng(0)
    m.set_route_override(RouteReplay(np.stack([[rng.choice(E, k, replace=False) for _ in range(L)]
                                               for _ in range(400)])))
    c = m.new_cache()
    tok = int(m.forward([5], c).argmax())
    for _ in range(4):
        tok = int(m.forward([tok], c).argmax())
    for rnd in range(2):
        for name, fn in (("pinned", pinned), ("pageable", pageable)):
            DeviceExperts.to_device = fn
            torch.cuda.synchronize()
            spent.update(ensure=0.0, calls=0)
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                tok = int(m.forward([tok], c).argmax())
                times.append(time.perf_counter() - t0)
            print(f"top-{k} index copies {name:8s} round {rnd}: median {1e3 * np.median(times):.2f} ms/token "
                  f"(min {1e3 * min(times):.2f}); miss handling {1e3 * spent['ensure'] / 10:.2f} ms/token", flush=True)
    DeviceExperts.to_device = pinned
    s = m.experts.stats()
    print({k2: v for k2, v in s.items() if k2.startswith("device_cache") or k2 == "device_dma_layers"})
    if k == 4:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                tok = int(m.forward([tok], c).argmax())
            torch.cuda.synchronize()
        ka = prof.key_averages()
        print(ka.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=50))
        print(ka.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=50))
    m.close()
    del m
