#!/usr/bin/env bash
# Session 6, H200 call A: every CUDA test on the current code while the 60-layer x 64-expert model is synthesized,
# then (c) again (all experts in VRAM, one CUDA graph a step) after the routing moved into DeviceExperts.moe_decode,
# then the transposed-activation experiment for the kernel bar (bench/device/qmv_variants.py).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_session6_a.sh")
set -uo pipefail
. bench/device/setup.sh
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep -E "Model name|^CPU\(s\)"; } >> "$R" 2>&1
say "fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer --no-progress --force"
( t0=$SECONDS; python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 \
    --no-tokenizer --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "rc=$? $((SECONDS - t0)) s" >> /tmp/synth_c60.txt ) &
SYN=$!
T="tests/engine/test_cuda.py tests/kernels/test_triton_qmv.py tests/kernels/test_triton_norm.py tests/kernels/test_triton_deltanet.py tests/bench/test_stream_cuda.py"
say "pytest $T"
timeout 220 python3 -m pytest -q -p no:cacheprovider $T 2>&1 | tail -15 | tee -a "$R" | tail -3
wait $SYN; cat /tmp/synth_c60.txt | tee -a "$R"
say "fmoe bench stream --device cuda --io-threads 8 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB --tokens 32 --warmup 4 --out c_L60E64_top10_router_allvram.json"
timeout 150 python3 -m fmoe bench stream --device cuda --io-threads 8 --model-dir /tmp/c60 --mode page-cache --top-k 10 \
    --routing router --gpu-memory-budget 40GB --tokens 32 --warmup 4 --out "$OUT/c_L60E64_top10_router_allvram.json" \
    > /tmp/c.txt 2>&1; echo "[c rc=$?]" | tee -a "$R"; tail -9 /tmp/c.txt | tee -a "$R"
rm -rf /tmp/c60
say "python3 bench/device/qmv_variants.py qmv_variants.json"
timeout 150 python3 bench/device/qmv_variants.py "$OUT/qmv_variants.json" 2>&1 | tail -8 | tee -a "$R"
echo "done at $SECONDS s" | tee -a "$R"
