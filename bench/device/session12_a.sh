#!/usr/bin/env bash
# Session 12, first call on the one-launch experts (fmoe_moe4_bulk): its tests and the bulk kernel's (bulk_finish now
# takes the refill as a function), timings against two launches, the engine's GPU tests, then (c) with one launch
# and with FMOE_CUDA_FUSED=0.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session12_a.sh", timeout_s=590)
set -uo pipefail
DEADLINE=575
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
pytests 150 tests/kernels/test_cuda_qmv.py -k "experts or launch_modes or refills or gate_up"
say "python3 bench/device/experts_time.py --rows 10"
timeout 100 python3 bench/device/experts_time.py --rows 10 >> "$R" 2>&1
echo "[experts_time rc=$? at $SECONDS s]" | tee -a "$R"
pytests 120 tests/engine/test_cuda.py
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
FMOE_CUDA_FUSED=0 bench c_60x64_vram_two_launches 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 \
    --routing router --gpu-memory-budget 40GB --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
