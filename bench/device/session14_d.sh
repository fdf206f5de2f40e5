#!/usr/bin/env bash
# Session 14, call 4: issue 14's 16-core bars on the current CPU code (no GPU used; the kernels changed in sessions
# 10-12 after the last 16-core runs: session 9's one-matrix mat-vec, session 6's decode): the call-overhead script
# (one 2 MB matrix a call, 16 and 8 threads), `fmoe bench kernels --threads 16` at 2/3/4/8 bits, twice, and the
# 12-layer 397B-shaped decode warm in RAM, three runs.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session14_d.sh", timeout_s=560)
set -uo pipefail
DEADLINE=550
. bench/device/setup.sh
export CUDA_VISIBLE_DEVICES=""
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200; free -g | head -2; uptime; } >> "$R" 2>&1
( timeout 120 python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force \
    --no-progress --no-tokenizer > /tmp/synth_s12.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_s12.txt ) &
SYN=$!
python3 -c "from fmoe.kernels import native; print('kernel variant:', native.kernel_isa())" >> "$R" 2>&1
say "python3 bench/device/cpu_call_overhead.py --threads 16 8"
timeout 100 python3 bench/device/cpu_call_overhead.py --threads 16 8 --json "$OUT/cpu_call_overhead.json" \
    --markdown "$OUT/cpu_call_overhead.md" > /tmp/ov.txt 2>&1
echo "[overhead rc=$? at $SECONDS s]" | tee -a "$R"; tail -12 /tmp/ov.txt >> "$R"
for i in 1 2; do
    say "fmoe bench kernels --threads 16 --bits 2 3 4 8   # run $i"
    timeout 90 python3 -m fmoe bench kernels --threads 16 --bits 2 3 4 8 > "/tmp/kern$i.txt" 2>&1
    echo "[kernels run $i rc=$? at $SECONDS s]" | tee -a "$R"; cat "/tmp/kern$i.txt" >> "$R"
done
wait $SYN; tail -2 /tmp/synth_s12.txt >> "$R"
for i in 1 2 3; do
    [ "$(left)" -lt 60 ] && { echo "skipped decode $i: deadline" | tee -a "$R"; break; }
    say "FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json   # run $i"
    FMOE_THREADS=16 timeout 90 python3 -m fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json \
        > "$OUT/decode_t16_run$i.json" 2> /tmp/dec_err.txt
    echo "[decode run $i rc=$? at $SECONDS s]" | tee -a "$R"; tail -3 /tmp/dec_err.txt >> "$R"
done
echo "done at $SECONDS s" | tee -a "$R"
