#!/usr/bin/env bash
# Issue 13 (a) with host-to-GPU copies straight from the page cache (registered layer-file mappings): the CUDA tests
# (the new DMA-vs-pinned test included) while the 12-layer x 512-expert model is synthesized, then (a) at top-10
# uniform and zipf with the VRAM budget scaled from 24 GB, top-4, and the 80 GB-scaled budget. Under a deadline, so
# that what finished comes back. TESTS overrides the test files; NODMA=1 adds the run with the registration off.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_dma.sh")
set -uo pipefail
. bench/device/setup.sh
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep -E "Model name|^CPU\(s\)"; free -g | head -2; } \
    >> "$R" 2>&1
say "fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 --no-tokenizer --no-progress --force"
( t0=$SECONDS; [ -f /tmp/a12/manifest.json ] || python3 -m fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 \
    --experts 512 --bits 4 --no-tokenizer --no-progress --force > /tmp/synth_a12.txt 2>&1
  echo "rc=$? $((SECONDS - t0)) s" >> /tmp/synth_a12.txt ) &
SYN=$!
TESTS=${TESTS:-tests/engine/test_cuda.py tests/kernels/test_triton_qmv.py tests/kernels/test_triton_norm.py tests/kernels/test_triton_deltanet.py tests/bench/test_stream_cuda.py}
say "pytest $TESTS"
timeout 200 python3 -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -15 | tee -a "$R" | tail -3
wait $SYN; cat /tmp/synth_a12.txt | tee -a "$R"
A="--model-dir /tmp/a12 --mode page-cache --tokens 12 --warmup 4"
bench a_L12E512_top10_uniform_vram24GB_dma 100 $A --top-k 10 --routing uniform --gpu-memory-budget 24GB
FMOE_CUDA_GRAPH=0 bench a_L12E512_top10_uniform_vram24GB_dma_eager 90 $A --top-k 10 --routing uniform --gpu-memory-budget 24GB
bench a_L12E512_top10_zipf_vram24GB_dma 90 $A --top-k 10 --routing zipf --gpu-memory-budget 24GB
bench a_L12E512_top4_uniform_vram24GB_dma 90 $A --top-k 4 --routing uniform --gpu-memory-budget 24GB
bench a_L12E512_top10_uniform_vram80GB_dma 90 $A --top-k 10 --routing uniform --gpu-memory-budget 80GB
[ -n "${NODMA:-}" ] && FMOE_PIN_PAGE_CACHE=0 bench a_L12E512_top10_uniform_vram24GB_nodma 90 $A --top-k 10 --routing uniform --gpu-memory-budget 24GB
bench a_L12E512_top10_router_vram24GB_dma 90 $A --top-k 10 --routing router --gpu-memory-budget 24GB
say "python3 bench/device/gpu_dma_profile.py /tmp/a12"
timeout $(( $(left) > 20 ? $(left) - 10 : 10 )) python3 bench/device/gpu_dma_profile.py /tmp/a12 > "$OUT/profile.txt" 2>&1
head -60 "$OUT/profile.txt"
echo "done at $SECONDS s" | tee -a "$R"
