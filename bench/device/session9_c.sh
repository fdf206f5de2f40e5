#!/usr/bin/env bash
# Session 9, call 4: the loads-only ablations of the tensor-core kernel (bench/device/qmv_overlap.py --round2).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_c.sh", timeout_s=200)
set -uo pipefail
DEADLINE=190
. bench/device/setup.sh
say "python3 bench/device/qmv_overlap.py --round2"
timeout 180 python3 bench/device/qmv_overlap.py --round2 >> "$R" 2>&1
echo "[round2 rc=$? at $SECONDS s]" | tee -a "$R"
