#!/usr/bin/env bash
# Session 11, call 4: the committed code (the bulk kernel launched to overlap the previous kernel, the slot table
# vouched for on the engine's down projection: cuda_qmv's BULK_OVERLAP / slots_ready): every GPU test, the engine's
# tests with FMOE_CUDA_QMV4=mma-b3, the kernel table (`fmoe bench kernels --device cuda --bits 4`), the variants'
# timelines at decode, then (c) 60 layers x 64 experts all in VRAM with and without the overlap.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_d.sh", timeout_s=590)
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
FMOE_CUDA_QMV4=mma-b3 pytests 100 tests/engine/test_cuda.py
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
timeout 90 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --no-trace --variants (all)"
timeout 60 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --no-trace --variants base no-overlap \
    slots-ready tpw1-slots-ready stages3-slots-ready >> "$R" 2>&1
echo "[variants rc=$? at $SECONDS s]" | tee -a "$R"
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
FMOE_CUDA_OVERLAP=0 bench c_60x64_vram_no_overlap 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 \
    --routing router --gpu-memory-budget 40GB --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
