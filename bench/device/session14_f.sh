#!/usr/bin/env bash
# Session 14, call 6: the CPU decode's RMSNorm by one native call (fmoe_rms_norm, TorchBackend.native_norm) on the
# 16-core host (no GPU used): its tests on AVX-512, then the A/B of the time outside the kernels on the 12-layer
# 397B-shaped model (alternated in one process), then `fmoe bench decode` twice with it (the default).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session14_f.sh", timeout_s=200)
set -uo pipefail
DEADLINE=190
. bench/device/setup.sh
export CUDA_VISIBLE_DEVICES="" FMOE_THREADS=16
( timeout 90 python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force \
    --no-progress --no-tokenizer > /tmp/synth_s12.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_s12.txt ) &
SYN=$!
pytests 60 --tb=short tests/kernels/test_isa_variants.py -k "rms_norm"
wait $SYN; tail -1 /tmp/synth_s12.txt | tee -a "$R"
say "python3 bench/device/native_norm_ab.py /tmp/s12 6"
timeout 60 python3 bench/device/native_norm_ab.py /tmp/s12 6 >> "$R" 2>&1
echo "[ab rc=$? at $SECONDS s]" | tee -a "$R"
for i in 1 2; do
    [ "$(left)" -lt 20 ] && { echo "skipped decode $i: deadline" | tee -a "$R"; break; }
    say "FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json   # run $i"
    timeout 30 python3 -m fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json \
        > "$OUT/decode_t16_run$i.json" 2> /tmp/dec_err.txt
    echo "[decode run $i rc=$? at $SECONDS s]" | tee -a "$R"; tail -2 /tmp/dec_err.txt >> "$R"
done
echo "done at $SECONDS s" | tee -a "$R"
