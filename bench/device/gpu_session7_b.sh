#!/usr/bin/env bash
# Session 7, second H200 call (short): the CUDA grouped mat-vec with two batches in flight per warp: its parity tests,
# then the launch-configuration sweep at 4 and 8 bits (the Triton peer was measured in call 3 of the same day).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu", "runs/head"], command="bash bench/device/gpu_session7_b.sh")
set -uo pipefail
. bench/device/setup.sh
[ -f runs/head/qmv.cpp ] && cp runs/head/qmv.cpp fmoe/kernels/qmv.cpp   # the committed CPU kernel, not a helper's edit in progress
say "pytest tests/kernels/test_cuda_qmv.py"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
rc=$?; tail -30 /tmp/t.txt >> "$R"; tail -3 /tmp/t.txt
if [ $rc -ne 0 ]; then echo "kernel tests failed: stop" | tee -a "$R"; exit 1; fi
say "python3 -m fmoe.bench.cuda_kernels --sweep --bits 4 8 --no-triton"
timeout 200 python3 -m fmoe.bench.cuda_kernels --sweep --bits 4 8 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -40 >> "$R"
echo "done at $SECONDS s" | tee -a "$R"
