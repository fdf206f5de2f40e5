#!/usr/bin/env bash
# Session 13, call 1: the producer warp paced (cuda_qmv.BULK_DEPTH / BULK_LEAD: at most D units in flight a block,
# the first D issued L clock cycles apart), against the default and the unpaced producer: the paced modes' tests, then
# timelines and graph timings at decode (10 rows, gate+up too), then 64 rows timed.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session13_a.sh", timeout_s=400)
set -uo pipefail
DEADLINE=390
. bench/device/setup.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee -a "$R"
pytests 120 -x --tb=short tests/kernels/test_cuda_qmv.py -k "paced or producer"
V="slots-ready producer-slots-ready paced-s2-d1-l0 paced-s3-d1-l0 paced-s3-d2-l0 paced-s3-d2-l500 paced-s3-d2-l1000
   paced-s3-d2-l2000 paced-s4-d2-l1000 paced-s4-d3-l700 paced-s4-d3-l0 paced-s2-d2-l1000"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants $V"
timeout 200 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants $V 2>&1 \
    | grep -v "^cold" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants $V"
timeout $(( $(left) - 5 )) python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants $V >> "$R" 2>&1
echo "[rows 64 rc=$? at $SECONDS s]" | tee -a "$R"
