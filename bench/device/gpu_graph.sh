#!/usr/bin/env bash
# Issue 13 on the H200 machine: the CUDA tests (every tier configuration, CUDA graph replay vs eager), then decode of a
# 12-layer 397B-shaped model (64 experts, 4-bit, top-10) warm in the page cache: every expert in VRAM with and without
# CUDA graphs, and the VRAM tier at the 24 GB-scaled budget (4.8 GB) and at its minimum (one token's experts).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_graph.sh")
set -uo pipefail
. bench/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
lscpu | grep -E "Model name|^CPU\(s\)" >> "$OUT/gpu.txt"
( python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force --no-progress \
    --no-tokenizer > "$OUT/synth.txt" 2>&1; echo "synth rc=$?" >> "$OUT/synth.txt" ) &
SYNTH=$!
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider -x ${TESTS:-tests/engine/test_cuda.py tests/engine/test_device_tier.py tests/kernels/test_triton_qmv.py} \
    2>&1 | tail -25 | tee "$OUT/tests_cuda.txt"
wait $SYNTH; cat "$OUT/synth.txt"
timeout ${BENCH_TIMEOUT:-240} python3 - <<'PY' 2>&1 | tee "$OUT/decode.jsonl"
import json, os, time
import numpy as np
import torch
from fmoe.engine.model import Model
def run(label, budget, graph=True, n=24):
    os.environ["FMOE_CUDA_GRAPH"] = "1" if graph else "0"
    t0 = time.perf_counter()
    m = Model.load("/tmp/s12", backend="torch", dtype="bfloat16", device="cuda", stream={"mode": "page-cache"},
                   gpu_memory_budget=budget)
    load = time.perf_counter() - t0
    c = m.new_cache()
    t = time.perf_counter(); m.forward(list(range(1, 33)), c); pre = time.perf_counter() - t
    ts, tok = [], 5
    mark = m.stats()
    for _ in range(n):
        torch.cuda.synchronize(); t = time.perf_counter()
        tok = int(m.ops.to_numpy(m.forward([tok], c)).argmax()); ts.append(time.perf_counter() - t)
    s = m.stats_since(mark).store
    dec = float(np.median(ts[4:]))
    print(json.dumps({"label": label, "gpu_memory_budget": budget, "cuda_graph": graph, "load_s": round(load, 2),
                      "prefill32_s": round(pre, 3), "decode_ms_per_token_median": round(dec * 1e3, 2),
                      "tok_s_12_layers": round(1 / dec, 2), "tok_s_projected_60_layers": round(1 / dec / 5, 2),
                      "captures": getattr(m._graph, "captures", None), "complete": s.get("device_complete"),
                      "device_cache_hit_rate": s.get("device_cache_hit_rate"),
                      "device_gb_copied": round(s.get("device_bytes_copied", 0) / 1e9, 2)}), flush=True)
    m.close()
run("all experts in VRAM, CUDA graph", None, True)
run("all experts in VRAM, eager (FMOE_CUDA_GRAPH=0)", None, False)
run("VRAM tier scaled from 24 GB (4.8 GB), eager", int(4.8e9), False)
run("VRAM tier at its minimum (one token's experts)", 0, False)
PY
