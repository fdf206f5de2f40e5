#!/usr/bin/env bash
# Session 9, call 2: programmatic dependent launch and the tensor-core kernel's ablations at decode sizes
# (bench/device/qmv_overlap.py), then the CUDA kernel and engine tests with overlapping launches on (the default).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_a.sh", timeout_s=560)
set -uo pipefail
DEADLINE=540
. bench/device/setup.sh
say "python3 bench/device/qmv_overlap.py"
timeout 220 python3 bench/device/qmv_overlap.py 2>&1 | tee -a "$R" | tail -3
echo "[overlap rc=$? at $SECONDS s]" | tee -a "$R"
say "pytest tests/kernels/test_cuda_qmv.py tests/engine/test_cuda.py"
timeout $(( $(left) - 10 )) python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py \
    tests/engine/test_cuda.py > /tmp/t.txt 2>&1
echo "[tests rc=$? at $SECONDS s]" | tee -a "$R"; grep -E "^(FAILED|ERROR)|passed|failed" /tmp/t.txt | head -20 >> "$R"
grep -n -m1 -B2 -A30 "^_\{5,\} " /tmp/t.txt >> "$R"
echo "done at $SECONDS s" | tee -a "$R"
