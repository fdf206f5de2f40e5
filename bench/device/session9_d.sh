#!/usr/bin/env bash
# Session 9, call 5: the bulk-copy tensor-core kernel (fmoe_qmv4_bulk): its tests, then its timing beside the
# default and the read peer (bench/device/qmv_overlap.py --bulk).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_d.sh", timeout_s=400)
set -uo pipefail
DEADLINE=390
. bench/device/setup.sh
say "pytest -k bulk tests/kernels/test_cuda_qmv.py"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider -k "bulk" tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
echo "[tests rc=$? at $SECONDS s]" | tee -a "$R"; grep -E "^(FAILED|ERROR)|passed|failed" /tmp/t.txt | head -20 >> "$R"
grep -n -m1 -B2 -A40 "^_\{5,\} " /tmp/t.txt | head -80 >> "$R"
say "python3 bench/device/qmv_overlap.py --bulk"
timeout 120 python3 bench/device/qmv_overlap.py --bulk >> "$R" 2>&1
echo "[bulk rc=$? at $SECONDS s]" | tee -a "$R"
