#!/usr/bin/env bash
# Session 11, call 8: scales and biases by swizzled 2-D tensor copies (cuda_qmv.BULK_SWIZZLE: 128-byte rows, the
# 8 rows of an mma fragment on 8 banks): the bulk kernel tests (every launch mode, linear scales too), the kernel
# table, then the engine's tests.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_h.sh", timeout_s=185)
set -uo pipefail
DEADLINE=178
. bench/device/setup.sh
pytests 80 tests/kernels/test_cuda_qmv.py -k "bulk or launch_modes"
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
timeout 30 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | grep -v "^#" >> "$R"
pytests 60 tests/engine/test_cuda.py
echo "done at $SECONDS s" | tee -a "$R"
