#!/usr/bin/env bash
# For the next session (written in session 11, not run: no device time left): the bulk kernel with a producer warp
# (cuda_qmv.BULK_PRODUCER: a 17th warp issues every copy and refills a buffer once its 16 consumer warps have
# released it, so no consumer spends ~0.1 us a copy; session 11 saw the refills on warp 0's path, 0.3-0.4 us a unit,
# 2-3 units a block at 4096 x 1024 x 10 rows). First the bulk tests (the producer modes included), then its
# timelines and graph timings at decode against the default, then 64 rows timed.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/producer_experiment.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
pytests 110 tests/kernels/test_cuda_qmv.py -k "bulk or launch_modes"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants slots-ready producer-..."
timeout 90 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants slots-ready \
    producer-slots-ready producer-stages2-slots-ready producer-stages3-slots-ready 2>&1 | grep -v "^cold" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants slots-ready producer-slots-ready"
timeout $(( $(left) - 5 )) python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants slots-ready \
    producer-slots-ready >> "$R" 2>&1
echo "[rows 64 rc=$? at $SECONDS s]" | tee -a "$R"
