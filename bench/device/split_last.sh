#!/usr/bin/env bash
# For the next session (written in session 13, not run: no device time left): the whole-rows kernel with a block's
# last unit over all its warps (cuda_qmv.BULK_WHOLE_SPLIT_LAST, the kernel's PROD 3; off by default: the default
# instances' SASS is unchanged). At decode's 10 rows a block has 5 units of 64 rows: 4 warp groups take one each, and
# the fifth, the last to land, takes one group a whole tile's products (0.63 us) after its bytes arrive; split over the
# 4 groups (a quarter of the inputs each, sums added on a named barrier) that tail should be ~0.2 us, about what the
# down projection lacks for 0.7 of HBM (8.2-8.4 us, needs <= 7.97). Its launch-mode tests (-x), timelines and graph
# timings at 10 rows, 1 and 64 rows timed; then the engine's GPU tests with it on. Also session 13's last GPU test
# (test_whole_rows_kernel_refills_spans_table_rows_and_falls_back), written after its last device call.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/split_last.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
pytests 90 -x --tb=short tests/kernels/test_cuda_qmv.py -k "launch_modes and last or falls_back"
V="whole-t4-sall whole-t4-split-last whole-t8-sall whole-t8-split-last"
say "python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V"
timeout 60 python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V 2>&1 | grep -v "^cold" \
    | grep -v "^.* 1024x4096" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 1 64 --time --no-trace --variants $V"
timeout 40 python3 bench/device/bulk_timeline.py --rows 1 64 --time --no-trace --variants $V 2>&1 \
    | grep -v "^.* 1024x4096" >> "$R"
echo "[rows 1 64 rc=$? at $SECONDS s]" | tee -a "$R"
FMOE_CUDA_WHOLE_SPLIT_LAST=1 pytests 110 -x --tb=short tests/engine/test_cuda.py
echo "done at $SECONDS s" | tee -a "$R"
