#!/usr/bin/env bash
# Session 6, the last H200 call. Issue 14 first, on a quiet host (CPU only): warm in-RAM decode of a 12-layer
# 397B-shaped model at 16 threads, this session's code alternated with the code at its start (runs/before_session,
# `git archive 510c5d0 fmoe`), then this code with the pool workers not spinning and with torch on one thread, then
# the 4-bit mat-vec. Then issue 13: the CUDA engine tests on the final code while the 12-layer x 512-expert model is
# synthesized, (b) cold from disk, and (a) top-10 uniform once more.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu", "runs/before_session"], command="bash bench/device/session6_final.sh")
set -uo pipefail
# The two trees run from /tmp: `python3 -m` puts the current directory ahead of PYTHONPATH (the first runs of these
# scripts, from the repository root, ran the current code under both labels).
. bench/device/setup.sh
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-220; free -g | head -2; nvidia-smi --query-gpu=name --format=csv; } >> "$R" 2>&1
say "fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force --no-progress --no-tokenizer"
timeout 80 python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force \
    --no-progress --no-tokenizer 2>&1 | tail -1 >> "$R"
NEW=/tmp/site:$PWD; OLD=/tmp/site:$PWD/runs/before_session
for P in $NEW $OLD; do (cd /tmp && PYTHONPATH=$P CUDA_VISIBLE_DEVICES="" python3 -c "from fmoe.kernels import native; print('variant', native.kernel_isa())" >> "$R" 2>&1); done
dec() {   # dec LABEL PYTHONPATH ENV...
    local label=$1 p=$2; shift 2
    say "$* FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json   # $label, load $(cut -d' ' -f1 /proc/loadavg)"
    (cd /tmp && env "$@" PYTHONPATH=$p CUDA_VISIBLE_DEVICES="" FMOE_THREADS=16 timeout 60 python3 -m fmoe bench \
        decode --model /tmp/s12 --tokens 8 --warm 24 --json 2>&1 | tail -1 >> "$R")
}
dec "this session" $NEW
dec "session start" $OLD
dec "this session" $NEW
dec "session start" $OLD
dec "this session, workers not spinning" $NEW FMOE_SPIN_US=0
dec "this session, torch on one thread" $NEW OMP_NUM_THREADS=1
say "fmoe bench kernels --threads 16 --bits 4 --quick --json"
CUDA_VISIBLE_DEVICES="" timeout 40 python3 -m fmoe bench kernels --threads 16 --bits 4 --quick --json 2>&1 | tail -1 >> "$R"
rm -rf /tmp/s12
echo "[cpu part done at $SECONDS s]" | tee -a "$R"
say "fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 --no-tokenizer --no-progress --force"
( python3 -m fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_a12.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_a12.txt ) &
SYN=$!
say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py 2>&1 \
    | tail -6 | tee -a "$R" | tail -2
wait $SYN; tail -2 /tmp/synth_a12.txt | tee -a "$R"
A="--model-dir /tmp/a12 --mode page-cache --top-k 10 --routing uniform --gpu-memory-budget 24GB"
say "fmoe bench stream --device cuda --io-threads 8 $A --tokens 12 --warmup 4 --out a_top10_uniform_24GB.json"
timeout 80 python3 -m fmoe bench stream --device cuda --io-threads 8 $A --tokens 12 --warmup 4 \
    --out "$OUT/a_top10_uniform_24GB.json" > /tmp/a.txt 2>&1; echo "[a rc=$?]" | tee -a "$R"; tail -8 /tmp/a.txt | tee -a "$R"
say "fmoe bench stream --device cuda --io-threads 8 $A --tokens 8 --warmup 2 --cold --out b_top10_uniform_24GB_cold.json"
timeout 100 python3 -m fmoe bench stream --device cuda --io-threads 8 $A --tokens 8 --warmup 2 --cold \
    --out "$OUT/b_top10_uniform_24GB_cold.json" > /tmp/b.txt 2>&1; echo "[b rc=$?]" | tee -a "$R"; tail -8 /tmp/b.txt | tee -a "$R"
echo "done at $SECONDS s" | tee -a "$R"
