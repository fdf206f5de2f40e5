#!/usr/bin/env bash
# Session 14, call 3: the final code (the default kernels' SASS as session 13's call 5 verified; split-last and the
# accumulator chains removed): every GPU test (CUDA kernel, Triton kernels, engine, stream bench, kernel report), the
# kernel table, (c) 60 x 64 all in VRAM.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session14_c.sh", timeout_s=590)
set -uo pipefail
DEADLINE=580
. bench/device/setup.sh
synth_c60
pytests 400 --tb=short tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py \
    tests/kernels/test_triton_norm.py tests/kernels/test_triton_deltanet.py tests/engine/test_cuda.py \
    tests/bench/test_stream_cuda.py tests/bench/test_cuda_kernels_report.py
cp /tmp/pytests.txt "$OUT/pytest_gpu.txt"
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
mkdir -p "$OUT/kernels"
timeout 60 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT/kernels" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
synth_c60_wait
bench c_60x64_vram 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
