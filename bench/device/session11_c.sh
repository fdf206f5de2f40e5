#!/usr/bin/env bash
# Ran at commit 06cc087 (its kernel and bulk_timeline.py variants; the losing ones were removed after call 3).
# Session 11, call 3: the bulk kernel with 8 warps a block so that two blocks fit an SM (registers <= 128, shared
# memory <= half an SM): with programmatic dependent launch and early copies the next launch's blocks start beside
# this one's and stream their weights during its tail; also two blocks a launch per SM. Modes test first.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_c.sh", timeout_s=400)
set -uo pipefail
DEADLINE=390
. bench/device/setup.sh
pytests 150 tests/kernels/test_cuda_qmv.py -k "launch_modes and warps"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants ..."
timeout 150 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants base pdl-early w8 w8-2sm \
    w8-2sm-pdl-early w8-2sm-tpw1-pdl-early w8-2sm-grid2 w8-2sm-grid2-pdl-early >> "$R" 2>&1
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants base w8-2sm-pdl-early w8-2sm-grid2"
timeout $(( $(left) - 5 )) python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants base \
    pdl-early w8-2sm-pdl-early w8-2sm-grid2 >> "$R" 2>&1
echo "[rows 64 rc=$? at $SECONDS s]" | tee -a "$R"
