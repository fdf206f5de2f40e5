#!/usr/bin/env bash
# Session 10, call 7: the bulk-copy kernel's gate+up mode. Its tests (and every other bulk test), the engine's tests
# with it as the gate+up kernel (FMOE_CUDA_GATE_UP=bulk), the kernel table (its gate+up rows), then (c) 60 x 64 all in
# VRAM with the gate+up default (the FMA kernel) and with FMOE_CUDA_GATE_UP=bulk.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session10_d.sh", timeout_s=330)
set -uo pipefail
DEADLINE=320
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
pytests 120 tests/kernels/test_cuda_qmv.py -k "bulk or compile or chosen or name"
FMOE_CUDA_GATE_UP=bulk pytests 60 tests/engine/test_cuda.py
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
timeout 90 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
FMOE_CUDA_GATE_UP=bulk bench c_60x64_vram_gate_up_bulk 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 \
    --routing router --gpu-memory-budget 40GB --tokens 16 --warmup 4
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
