#!/usr/bin/env bash
# Session 8, second H200 call: the tensor-core 4-bit kernel (fmoe_qmv4_mma in fmoe/kernels/cuda_qmv.cu). Its parity
# tests first (on failure: bench/device/mma_diag.py and stop), the kernel table at 4 bits (tensor cores, the FMA
# kernel and Triton in the same run), then the engine's CUDA tests and (c) 60 layers x 64 experts all in VRAM.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_b.sh", timeout_s=500)
set -uo pipefail
DEADLINE=480
. bench/device/setup.sh
say "pytest tests/kernels/test_cuda_qmv.py"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
rc=$?; tail -30 /tmp/t.txt >> "$R"; tail -3 /tmp/t.txt
if [ $rc -ne 0 ]; then
  for gs in 64 32; do python3 bench/device/mma_diag.py --group $gs 2>&1 | tee -a "$R"; done
  python3 bench/device/mma_diag.py --n-in 1024 2>&1 | head -8 | tee -a "$R"; exit 1
fi
say "python3 -m fmoe.bench.cuda_kernels --bits 4"
timeout 80 python3 -m fmoe.bench.cuda_kernels --bits 4 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -30 | tee -a "$R"
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py 2>&1 \
    | tail -12 | tee -a "$R" | tail -2
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
