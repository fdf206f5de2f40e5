#!/usr/bin/env bash
# Session 11, call 7: the engine's gate+up launched with its slot table vouched for where a kernel that does not write
# the slots (the routing weights' renormalisation, cast or concatenation) runs between their last write and gate+up:
# the engine and CUDA stream-bench tests, then (c) 60 layers x 64 experts all in VRAM, with and without the overlap.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_g.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
pytests 150 tests/engine/test_cuda.py tests/bench/test_stream_cuda.py
wait $SYN; tail -1 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 50 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
FMOE_CUDA_OVERLAP=0 bench c_60x64_vram_no_overlap 50 --model-dir /tmp/c60 --mode page-cache --top-k 10 \
    --routing router --gpu-memory-budget 40GB --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
