#!/usr/bin/env bash
# A session's H200 check of the committed code (session 10: the int8 bulk-copy kernel is now the engine's one-matrix
# default): every GPU test (kernels, engine, the CUDA stream bench), the engine's tests with the previous default
# (FMOE_CUDA_QMV4=mma-b3), the kernel table, then the engine's (c) run (60 layers x 64 experts, all in VRAM) with the
# default and with "mma-b3". One report ($OUT/report.txt) plus JSON: the device returns at most 8 files.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/verify_gpu.sh", timeout_s=590)
set -uo pipefail
DEADLINE=580
. bench/device/setup.sh
{ nvidia-smi --query-gpu=name --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } >> "$R" 2>&1
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
pytests 260 tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py tests/engine/test_cuda.py \
    tests/bench/test_stream_cuda.py
FMOE_CUDA_QMV4=mma-b3 pytests 120 tests/engine/test_cuda.py
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
timeout 90 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
FMOE_CUDA_QMV4=mma-b3 bench c_60x64_vram_mma_b3 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 \
    --routing router --gpu-memory-budget 40GB --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
