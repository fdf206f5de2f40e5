#!/usr/bin/env bash
# Issue 14 on the H200 machine's 16-core host (CPU only), in about a minute: warm in-RAM decode of a 12-layer
# 397B-shaped model after 24 warm-up tokens (most experts touched once), 16 threads.
#   run(kind="nvidia-h200", command="bash bench/device/cpu_decode_check.sh")
export PYTHONPATH=$PWD FMOE_CACHE_DIR=/tmp/fmoe-cache CUDA_VISIBLE_DEVICES=""
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -c "from fmoe.kernels import native; print(native.kernel_isa())" > "$OUT/cpu_decode.txt" 2>&1 &
timeout 40 python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force \
    --no-progress --no-tokenizer >> "$OUT/cpu_decode.txt" 2>&1
wait
echo "+ FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 6 --warm 24 --json" >> "$OUT/cpu_decode.txt"
FMOE_THREADS=16 timeout 30 python3 -m fmoe bench decode --model /tmp/s12 --tokens 6 --warm 24 --json >> "$OUT/cpu_decode.txt" 2>&1
cat "$OUT/cpu_decode.txt"
