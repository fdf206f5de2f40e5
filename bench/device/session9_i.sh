#!/usr/bin/env bash
# Session 9, call 10 (the last of the session's device time): the bulk-copy kernel's tests after the launcher's fix
# (call 9: a launch whose static + dynamic shared memory passed 48 KB without the opt-in failed), then every CUDA
# kernel test (the opt-in now counts each kernel's static shared memory).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_i.sh", timeout_s=200)
set -uo pipefail
DEADLINE=190
. bench/device/setup.sh
say "pytest -k bulk tests/kernels/test_cuda_qmv.py"
timeout 60 python3 -m pytest -q -p no:cacheprovider -k "bulk" tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
echo "[bulk tests rc=$? at $SECONDS s]" | tee -a "$R"; grep -E "^(FAILED|ERROR)|passed|failed" /tmp/t.txt | head -20 >> "$R"
grep -n -m1 -B2 -A40 "^_\{5,\} " /tmp/t.txt | head -60 >> "$R"
say "pytest tests/kernels/test_cuda_qmv.py"
timeout $(( $(left) - 5 )) python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_qmv.py > /tmp/t2.txt 2>&1
echo "[tests rc=$? at $SECONDS s]" | tee -a "$R"; grep -E "^(FAILED|ERROR)|passed|failed" /tmp/t2.txt | head -20 >> "$R"
echo "done at $SECONDS s" | tee -a "$R"
