#!/usr/bin/env bash
# Session 13, call 4: whole rows a warp for the down projection (cuda_qmv.BULK_WHOLE_ROWS, the kernel's PROD 2: one
# warp a 16-row tile over all 1024 inputs, units of T tiles, no barrier between warps, a block's units all in flight
# where they fit), against the default and the producer warp. Its tests, then timelines and graph timings at 10
# rows, then 64 rows timed.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session13_d.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
pytests 120 -x --tb=short tests/kernels/test_cuda_qmv.py -k "launch_modes and whole"
V="slots-ready producer-slots-ready producer-s2-t4 whole-t4-sall whole-t2-sall whole-t8-sall whole-t1-sall
   whole-t2-s8"
say "python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V"
timeout 120 python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V 2>&1 | grep -v "^cold" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V"
timeout $(( $(left) - 5 )) python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V \
    >> "$R" 2>&1
echo "[rows 64 1 rc=$? at $SECONDS s]" | tee -a "$R"
