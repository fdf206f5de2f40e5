#!/usr/bin/env bash
# Ran at commit ef3d0ef; that kernel change was reverted after this call (slower: see bench/results/cuda_stream.md, session 11).
# Session 11, call 6: the bulk kernel with its unit's rows summed along the row (bulk_rows: the scales' 8-way bank
# conflicts gone, Nsight Compute of call 5) and x's l digits padded off h's banks: the bulk and engine tests, the
# kernel table, warm timelines, Nsight Compute again, and (c) 60 x 64 all in VRAM.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_f.sh", timeout_s=420)
set -uo pipefail
DEADLINE=410
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
pytests 150 tests/kernels/test_cuda_qmv.py -k "bulk or launch_modes"
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
timeout 60 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | grep -v "^#" >> "$R"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --variants base slots-ready"
timeout 40 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --variants base slots-ready 2>&1 \
    | grep -v "^cold" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
pytests 70 tests/engine/test_cuda.py
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ] && [ "$(left)" -gt 100 ]; then
    timeout 40 "$NCU" --kernel-name regex:"fmoe_qmv4_bulk" --launch-skip 3 --launch-count 3 --section SpeedOfLight \
        --section MemoryWorkloadAnalysis_Tables python3 bench/device/ncu_bulk.py > "$OUT/ncu.txt" 2>&1
    echo "[ncu rc=$? at $SECONDS s]" | tee -a "$R"
fi
wait $SYN; tail -1 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
