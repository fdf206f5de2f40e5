#!/usr/bin/env bash
# Session 15, call 6: the final code on the GPU: every GPU test (CUDA kernel, Triton kernels, engine, stream bench,
# kernel report) and (c) 60 layers x 64 experts all in VRAM (after attention's GQA moved to SDPA's enable_gqa).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session15_f.sh", timeout_s=520)
set -uo pipefail
DEADLINE=510
. bench/device/setup.sh
synth_c60
pytests 400 --tb=short tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py \
    tests/kernels/test_triton_norm.py tests/kernels/test_triton_deltanet.py tests/engine/test_cuda.py \
    tests/bench/test_stream_cuda.py tests/bench/test_cuda_kernels_report.py
cp /tmp/pytests.txt "$OUT/pytest_gpu.txt"
synth_c60_wait
bench c_60x64_vram 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
