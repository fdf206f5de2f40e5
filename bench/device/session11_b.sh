#!/usr/bin/env bash
# Ran at commit b8c68d7 (its kernel and bulk_timeline.py variants; the losing ones were removed after call 3).
# Session 11, call 2: the bulk kernel's BULK_LATE (a block's other units' copies once x is staged: call 1 showed x
# staged later the more copies thread 0 issued first) and BULK_LANES (deferred blocks: warp 0's lanes issue the
# copies, a unit each), alone and with PDL + early copies; the modes test first (against the FMA kernel).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_b.sh", timeout_s=400)
set -uo pipefail
DEADLINE=390
. bench/device/setup.sh
pytests 150 tests/kernels/test_cuda_qmv.py -k "launch_modes or compiles"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants ..."
timeout 200 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants base late pdl-early \
    pdl-early-late defer1-lanes defer1-lanes-late defer2-lanes-late defer1-lanes-pdl-early \
    defer1-lanes-late-pdl-early defer2-lanes-late-pdl-early >> "$R" 2>&1
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
