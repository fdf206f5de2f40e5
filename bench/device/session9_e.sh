#!/usr/bin/env bash
# Session 9, call 6: the bulk-copy kernel with 1 to 4 stage buffers in flight (call 5 had all that fit, ~200 KB an
# SM: every stage then completes at about the same time and the computing is not overlapped).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_e.sh", timeout_s=200)
set -uo pipefail
DEADLINE=190
. bench/device/setup.sh
say "python3 bench/device/qmv_overlap.py --bulk --stages 1 2 3 4 6 0"
timeout 180 python3 bench/device/qmv_overlap.py --bulk --stages 1 2 3 4 6 0 >> "$R" 2>&1
echo "[bulk rc=$? at $SECONDS s]" | tee -a "$R"
