#!/usr/bin/env bash
# Issue 13, the session's last H200 call: CUDA tests of the fused kernels and the graph path, then
#   (c) 60 layers x 64 experts, every expert in VRAM, top-10, the model's own router (CUDA graph replay), with and
#       without the fused Gated DeltaNet kernels (FMOE_FUSED_DELTANET=0);
#   (a) 12 layers x 512 experts warm in the page cache, VRAM budget scaled from 24 GB, top-10, uniform and zipf;
#   (b) the same cold from disk (page cache dropped), uniform.
# Steps run in that order under a deadline so that what finished comes back.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_final.sh")
set -uo pipefail
DEADLINE=${DEADLINE:-540}
. bench/device/setup.sh
{ nvidia-smi --query-gpu=name,memory.total --format=csv; lscpu | grep -E "Model name|^CPU\(s\)"; free -g | head -2; } \
    > "$OUT/machine.txt" 2>&1
say "fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer --no-progress --force"
( t0=$SECONDS; python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 \
    --no-tokenizer --no-progress --force > "$OUT/synth_c60.txt" 2>&1; echo "rc=$? $((SECONDS - t0)) s" >> "$OUT/synth_c60.txt" ) &
SYN=$!
say "pytest tests/kernels/test_triton_deltanet.py tests/kernels/test_triton_qmv.py tests/kernels/test_triton_norm.py tests/engine/test_cuda.py -k 'graph or deltanet or qmv or norm or page-cache-None-demo'"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_deltanet.py tests/kernels/test_triton_qmv.py \
    tests/kernels/test_triton_norm.py tests/engine/test_cuda.py -k "graph or deltanet or qmv or norm or page-cache-None-demo" \
    2>&1 | tail -6 | tee "$OUT/tests_cuda.txt"
wait $SYN; cat "$OUT/synth_c60.txt"
bench c_L60E64_top10_router_allvram 150 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router \
    --gpu-memory-budget 40GB --tokens 32 --warmup 4
FMOE_FUSED_DELTANET=0 bench c_L60E64_top10_router_allvram_no_fused_deltanet 120 --model-dir /tmp/c60 --mode page-cache \
    --top-k 10 --routing router --gpu-memory-budget 40GB --tokens 32 --warmup 4
rm -rf /tmp/c60
if [ "$(left)" -gt 150 ]; then
    say "fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 --no-tokenizer --no-progress --force"
    t0=$SECONDS; timeout $(( $(left) - 60 )) python3 -m fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 \
        --experts 512 --bits 4 --no-tokenizer --no-progress --force > "$OUT/synth_a12.txt" 2>&1
    echo "synth a12 rc=$? $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
    bench a_L12E512_top10_uniform_vram24GB 90 --model-dir /tmp/a12 --mode page-cache --top-k 10 --routing uniform \
        --gpu-memory-budget 24GB --tokens 12 --warmup 4
    bench a_L12E512_top10_zipf_vram24GB 90 --model-dir /tmp/a12 --mode page-cache --top-k 10 --routing zipf \
        --gpu-memory-budget 24GB --tokens 12 --warmup 4
    bench b_L12E512_top10_uniform_vram24GB_cold 90 --model-dir /tmp/a12 --mode page-cache --top-k 10 --routing uniform \
        --gpu-memory-budget 24GB --tokens 8 --warmup 2 --cold
fi
echo "done at $SECONDS s" | tee -a "$OUT/steps.txt"
