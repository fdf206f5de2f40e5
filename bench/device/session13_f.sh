#!/usr/bin/env bash
# Session 13, call 6: whole rows with two warps a tile (cuda_qmv.BULK_WHOLE_SPLIT, FMOE_CUDA_WHOLE_SPLIT=1: each warp
# half the inputs, the pair's sums added through shared memory on a named barrier), against the default (one warp a
# tile): its launch-mode tests (-x), timelines and graph timings at 10 rows, 64 and 1 rows timed, then the engine's
# GPU tests with it on.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session13_f.sh", timeout_s=250)
set -uo pipefail
DEADLINE=245
. bench/device/setup.sh
pytests 60 -x --tb=short tests/kernels/test_cuda_qmv.py -k "launch_modes and two"
V="whole-t4-sall pairs-t4 pairs-t2 pairs-t8"
say "python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V"
timeout 40 python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V 2>&1 | grep -v "^cold" \
    | grep -v "^.* 1024x4096" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V"
timeout 30 python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V 2>&1 \
    | grep -v "^.* 1024x4096" >> "$R"
echo "[rows 64 1 rc=$? at $SECONDS s]" | tee -a "$R"
FMOE_CUDA_WHOLE_SPLIT=1 pytests 110 -x --tb=short tests/engine/test_cuda.py
echo "done at $SECONDS s" | tee -a "$R"
