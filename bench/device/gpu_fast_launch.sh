#!/usr/bin/env bash
# The CUDA tests, then the decode profile and the all-in-VRAM decode after the direct Triton launch (issue 13).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_fast_launch.sh")
set -uo pipefail
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force --no-progress \
    --no-tokenizer > /dev/null 2>&1 ) &
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_qmv.py tests/engine/test_cuda.py \
    tests/engine/test_device_tier.py 2>&1 | tail -3 | tee "$OUT/tests_cuda.txt"
wait
bash bench/device/gpu_profile.sh
