#!/usr/bin/env bash
# Session 12, the last call: the committed code with the producer warp as the bulk-copy kernel's default (2 stages):
# every GPU test but Triton's (unchanged), the kernel table, then (c) 60 layers x 64 experts all in VRAM with the
# producer warp and with FMOE_CUDA_PRODUCER=0.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session12_f.sh", timeout_s=420)
set -uo pipefail
DEADLINE=400
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
pytests 200 tests/kernels/test_cuda_qmv.py tests/engine/test_cuda.py tests/bench/test_stream_cuda.py
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
timeout 80 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
FMOE_CUDA_PRODUCER=0 bench c_60x64_vram_no_producer 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 \
    --routing router --gpu-memory-budget 40GB --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
