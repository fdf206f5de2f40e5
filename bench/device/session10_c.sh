#!/usr/bin/env bash
# Session 10, call 5: the int8 bulk kernel with x staged before any copy is issued (xfirst), the first slot loaded at entry
# cold launch a block timeline at 10 rows, then times at 10 / 20 / 64 rows: 1-2 tiles a warp x 2-4 stages, products
# only and copies only, beside the bf16 bulk kernel, mma-k256 and the read peer.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session10_c.sh", timeout_s=400)
set -uo pipefail
DEADLINE=390
. bench/device/setup.sh
say "python3 bench/device/qmv_int8.py"
timeout 370 python3 bench/device/qmv_int8.py >> "$R" 2>&1
echo "[int8 rc=$? at $SECONDS s]" | tee -a "$R"
