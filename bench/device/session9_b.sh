#!/usr/bin/env bash
# Session 9, call 3: bench/device/qmv_overlap.py alone (call 2's run of it stopped at a KeyError of the script).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_b.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
say "python3 bench/device/qmv_overlap.py"
timeout 270 python3 bench/device/qmv_overlap.py >> "$R" 2>&1
echo "[overlap rc=$? at $SECONDS s]" | tee -a "$R"
