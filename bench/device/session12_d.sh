#!/usr/bin/env bash
# Session 12, fourth call: the one-launch experts' down units of 4 tiles a warp (128 rows, 72 KB: each unit's fixed
# cost, a barrier, the refill's copies and the row sums, over twice the bytes), against 2 tiles and with the plan's
# down-unit cost 1.5; then its tests.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session12_d.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
for set in "" "EXPERTS_DOWN_COST=1.5" "EXPERTS_DOWN_TILES=2"; do
    say "python3 bench/device/experts_time.py --rows 10 --set $set"
    timeout 60 python3 bench/device/experts_time.py --rows 10 --set $set >> "$R" 2>&1
    echo "[experts_time rc=$? at $SECONDS s]" | tee -a "$R"
done
pytests 100 tests/kernels/test_cuda_qmv.py -k "experts"
