#!/usr/bin/env bash
# Session 12, second call: the one-launch experts with the counters signalled by warp 15 (not the copies' issuer),
# their per-block timeline, with and without two down units a buffer; then its tests.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session12_b.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
say "python3 bench/device/experts_time.py --rows 10"
timeout 60 python3 bench/device/experts_time.py --rows 10 >> "$R" 2>&1
echo "[experts_time rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/experts_time.py --rows 10 --set EXPERTS_SUB_BUFFERS=False"
timeout 60 python3 bench/device/experts_time.py --rows 10 --set EXPERTS_SUB_BUFFERS=False >> "$R" 2>&1
echo "[experts_time rc=$? at $SECONDS s]" | tee -a "$R"
pytests 100 tests/kernels/test_cuda_qmv.py -k "experts"
