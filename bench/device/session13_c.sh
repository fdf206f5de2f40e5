#!/usr/bin/env bash
# Session 13, call 3: a unit's rows summed by the last of its 16 warps to finish (cuda_qmv.BULK_LAST_WARP, the
# kernel's PROD 2: no barrier between the warps a unit), against the producer warp with its barrier and the default;
# 2-4 stages, 1, 2 or 4 tiles a warp. Its tests, then timelines and graph timings at 10 rows, then 64 rows timed.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session13_c.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
pytests 120 -x --tb=short tests/kernels/test_cuda_qmv.py -k "launch_modes and last"
V="slots-ready producer-slots-ready last-s2-t2 last-s3-t2 last-s4-t2 last-s2-t4 last-s3-t4 producer-s2-t4
   producer-s3-t4 last-s2-t1 last-s4-t1"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants $V"
timeout 120 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants $V 2>&1 \
    | grep -v "^cold" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 --gate-up --time --no-trace --variants $V"
timeout $(( $(left) - 5 )) python3 bench/device/bulk_timeline.py --rows 64 --gate-up --time --no-trace --variants $V \
    >> "$R" 2>&1
echo "[rows 64 rc=$? at $SECONDS s]" | tee -a "$R"
