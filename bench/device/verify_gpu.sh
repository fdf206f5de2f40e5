#!/usr/bin/env bash
# The first H200 call of a session: every GPU test on the committed code, then the kernel tables. Written at the end
# of session 8, whose last GPU-side fixes (16-byte aligned per-warp staging at group 128, the "mma-b3" default) and
# the Triton 3/5/6-bit unit kernel (FMOE_TRITON_UNITS=1) have not run on a GPU yet. One report ($OUT/report.txt) plus
# the kernel table's JSON: the device returns at most 8 files.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/verify_gpu.sh", timeout_s=560)
set -uo pipefail
DEADLINE=540
. bench/device/setup.sh
{ nvidia-smi --query-gpu=name --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } >> "$R" 2>&1
say "pytest tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py tests/engine/test_cuda.py tests/bench/test_stream_cuda.py"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py \
    tests/engine/test_cuda.py tests/bench/test_stream_cuda.py > /tmp/t.txt 2>&1
echo "[tests rc=$? at $SECONDS s]" | tee -a "$R"; grep -E "^(FAILED|ERROR)|passed|failed" /tmp/t.txt | head -40 >> "$R"
grep -n -m1 -B2 -A30 "^_\{5,\} " /tmp/t.txt >> "$R"              # the first failure in full, if any
say "FMOE_TRITON_UNITS=1 pytest tests/kernels/test_triton_qmv.py"
FMOE_TRITON_UNITS=1 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_qmv.py 2>&1 \
    | tail -3 | tee -a "$R"
say "python3 -m fmoe.bench.cuda_kernels --bits 4 3"
timeout 150 python3 -m fmoe.bench.cuda_kernels --bits 4 3 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
echo "done at $SECONDS s" | tee -a "$R"
