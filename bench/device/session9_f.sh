#!/usr/bin/env bash
# Session 9, call 7: the bulk-copy kernel with each stage's slot loaded one unit ahead (call 6: ~1.3-1.8 us a stage,
# a memory latency: thread 0 waited for the slot table before each refill, and every warp for thread 0), its tests,
# then 2 to 4 stage buffers in flight.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_f.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
say "pytest -k bulk tests/kernels/test_cuda_qmv.py"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider -k "bulk" tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
echo "[tests rc=$? at $SECONDS s]" | tee -a "$R"; grep -E "^(FAILED|ERROR)|passed|failed" /tmp/t.txt | head -20 >> "$R"
grep -n -m1 -B2 -A40 "^_\{5,\} " /tmp/t.txt | head -80 >> "$R"
say "python3 bench/device/qmv_overlap.py --bulk --stages 2 3 4 0"
timeout 120 python3 bench/device/qmv_overlap.py --bulk --stages 2 3 4 0 >> "$R" 2>&1
echo "[bulk rc=$? at $SECONDS s]" | tee -a "$R"
