#!/usr/bin/env bash
# Where a CUDA decode token goes (issue 13): cProfile of 10 decode tokens of a 12-layer 397B-shaped model (64 experts,
# 4-bit, top-10) with every expert in the VRAM tier, after warm-up.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_profile.sh")
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD FMOE_CACHE_DIR=/tmp/fmoe-cache
[ -d /tmp/s12 ] || python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force \
    --no-progress --no-tokenizer > /dev/null
timeout 300 python3 - <<'PY' 2>&1 | tee "$OUT/gpu_profile.txt"
import cProfile, pstats, time, io
import torch
from fmoe.engine.model import Model
m = Model.load("/tmp/s12", backend="torch", dtype="bfloat16", device="cuda", stream={"mode": "page-cache"},
               gpu_memory_budget=int(20e9))
c = m.new_cache(); m.forward(list(range(1, 33)), c)
tok = 5
for _ in range(24):      # warm-up: every expert lands in VRAM, kernels compiled
    tok = int(m.ops.to_numpy(m.forward([tok], c)).argmax())
torch.cuda.synchronize()
pr = cProfile.Profile(); t = time.perf_counter(); pr.enable()
for _ in range(10):
    tok = int(m.ops.to_numpy(m.forward([tok], c)).argmax())
torch.cuda.synchronize(); pr.disable()
print(f"decode ms/token {(time.perf_counter() - t) * 100:.1f} (profiled)")
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue()[:6000])
print(m.experts.stats().get("device_cache_hit_rate"))
PY
