#!/usr/bin/env bash
# Session 12, third call: the one-launch experts with a signal warp (warp 16 counts each pair's h rows; no computing
# warp waits for a fence or an extra barrier): timings and timelines, the plan's down-unit cost 1.0 / 1.5, one
# down unit a buffer; then its tests.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session12_c.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
for set in "" "EXPERTS_DOWN_COST=1.5" "EXPERTS_SUB_BUFFERS=False"; do
    say "python3 bench/device/experts_time.py --rows 10 --set $set"
    timeout 60 python3 bench/device/experts_time.py --rows 10 --set $set >> "$R" 2>&1
    echo "[experts_time rc=$? at $SECONDS s]" | tee -a "$R"
done
pytests 100 tests/kernels/test_cuda_qmv.py -k "experts"
