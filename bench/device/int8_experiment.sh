#!/usr/bin/env bash
# For the next session (written in session 9, not run yet): the int8 tensor-core variant of the bulk-copy kernel
# (bench/device/qmv_int8.cu: ~40% fewer issued instructions a stage than the bf16 one in SASS) checked against the
# FMA kernel, then timed beside the bulk kernel and the read peer.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/int8_experiment.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
say "python3 bench/device/qmv_int8.py"
timeout 270 python3 bench/device/qmv_int8.py >> "$R" 2>&1
echo "[int8 rc=$? at $SECONDS s]" | tee -a "$R"
