#!/usr/bin/env bash
# Session 8, last H200 call, on the final code: the CUDA kernel tests (the .cu only reformatted and given one
# accessor since calls 6-8), the Triton tests with the new 3/5/6-bit unit kernel (replacing the byte kernel), and
# the kernel table at 3 bits (the unit kernel) and 4 bits (no Triton).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_i.sh", timeout_s=230)
set -uo pipefail
DEADLINE=220
. bench/device/setup.sh
say "pytest tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py \
    > /tmp/t.txt 2>&1; echo "[tests rc=$? at $SECONDS s]" | tee -a "$R"; tail -15 /tmp/t.txt >> "$R"; tail -2 /tmp/t.txt
say "python3 -m fmoe.bench.cuda_kernels --bits 3"
timeout 60 python3 -m fmoe.bench.cuda_kernels --bits 3 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -8 | tee -a "$R"
echo "done at $SECONDS s" | tee -a "$R"
