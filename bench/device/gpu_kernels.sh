#!/usr/bin/env bash
# The GPU grouped quantized mat-vec on the H200 machine: its parity tests on CUDA, then `fmoe bench kernels --device
# cuda` (bandwidth vs a device copy measured in the same run). Wheels the image lacks (pytest) are carried:
#   pip download --python-version 3.12 --only-binary=:all: pytest pluggy iniconfig packaging -d runs/whl_gpu
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_kernels.sh")
set -euo pipefail
. bench/device/setup.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_qmv.py 2>&1 | tail -5 | tee "$OUT/test_triton_qmv.txt"
python3 -m fmoe.bench.cuda_kernels --write "$OUT" 2>&1 | tail -40
