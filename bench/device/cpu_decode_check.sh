#!/usr/bin/env bash
# Issue 14 on the H200 machine's 16-core host (CPU only), in about two minutes: warm in-RAM decode of a 12-layer
# 397B-shaped model after 24 warm-up tokens (most experts touched once), 16 threads; the same with the kernel pool's
# workers not spinning between calls (FMOE_SPIN_US=0) and with torch's own ops on one thread (OMP_NUM_THREADS=1), to
# see what the time outside the kernels is made of; then the 4-bit mat-vec at 16 threads.
#   run(kind="nvidia-h200", command="bash bench/device/cpu_decode_check.sh")
export PYTHONPATH=$PWD FMOE_CACHE_DIR=/tmp/fmoe-cache CUDA_VISIBLE_DEVICES="" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
R="$OUT/cpu_decode.txt"
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-220; free -g | head -2; } > "$R" 2>&1
python3 -c "from fmoe.kernels import native; print('kernel variant:', native.kernel_isa())" >> "$R" 2>&1 &
[ -f /tmp/s12/manifest.json ] || timeout 60 python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 \
    --experts 64 --bits 4 --force --no-progress --no-tokenizer >> "$R" 2>&1
wait
run() {   # run LABEL ENV... : one decode measurement
    local label=$1; shift
    echo "+ $* FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json   # $label" >> "$R"
    env "$@" FMOE_THREADS=16 timeout 60 python3 -m fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json \
        >> "$R" 2>&1
}
run default
run "pool workers do not spin" FMOE_SPIN_US=0
run "torch ops on one thread" OMP_NUM_THREADS=1
run default-again
echo "+ fmoe bench kernels --threads 16 --bits 4 --quick --json" >> "$R"
timeout 40 python3 -m fmoe bench kernels --threads 16 --bits 4 --quick --json >> "$R" 2>&1
cat "$R"
