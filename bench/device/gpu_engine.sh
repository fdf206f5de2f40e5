#!/usr/bin/env bash
# The CUDA engine path on the H200 machine (issue 13): its correctness tests against the CPU path (every tier
# configuration), then decode of a 12-layer 397B-shaped model (64 experts, 4-bit, top-10) warm in the page cache with
# the VRAM expert tier at three budgets. Wheels the image lacks (pytest, rich) are carried:
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_engine.sh")
set -uo pipefail
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force --no-progress \
    --no-tokenizer > "$OUT/synth.txt" 2>&1; echo "synth rc=$?" >> "$OUT/synth.txt" ) &
SYNTH=$!
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/kernels/test_triton_qmv.py \
    2>&1 | tail -15 | tee "$OUT/tests_cuda.txt"
wait $SYNTH; cat "$OUT/synth.txt"
timeout 240 python3 - <<'PY' 2>&1 | tee "$OUT/decode.jsonl"
import json, time
import numpy as np
import torch
from fmoe.engine.model import Model
def run(label, budget, n=14):
    m = Model.load("/tmp/s12", backend="torch", dtype="bfloat16", device="cuda", stream={"mode": "page-cache"},
                   gpu_memory_budget=budget)
    c = m.new_cache()
    t = time.perf_counter(); m.forward(list(range(1, 33)), c); pre = time.perf_counter() - t
    ts, tok = [], 5
    for _ in range(n):
        torch.cuda.synchronize(); t = time.perf_counter()
        tok = int(m.ops.to_numpy(m.forward([tok], c)).argmax()); ts.append(time.perf_counter() - t)
    s = m.experts.stats()
    dec = float(np.median(ts[4:]))
    print(json.dumps({"label": label, "gpu_memory_budget": budget, "prefill32_s": round(pre, 3),
                      "decode_ms_per_token_median": round(dec * 1e3, 1), "tok_s_12_layers": round(1 / dec, 2),
                      "tok_s_projected_60_layers": round(1 / dec / 5, 2),
                      "device_cache_hit_rate": s.get("device_cache_hit_rate"),
                      "device_resident_gb": round(s.get("device_resident_bytes", 0) / 1e9, 2),
                      "bytes_read_gb": round(s["bytes_read"] / 1e9, 2)}))
    m.close()
run("no VRAM tier (experts copied from host each use)", 0)
run("VRAM tier scaled from 24 GB (24 x 12/60 = 4.8 GB)", int(4.8e9))
run("all experts in VRAM (20 GB budget)", int(20e9))
PY
