#!/usr/bin/env bash
# For the next session (written in session 12, not run: no device time left): the whole GPU suite with the producer
# warp on (FMOE_CUDA_PRODUCER=1; session 12's call 7 ran out of time in it), to decide whether it becomes the default
# (it was 3-5% faster per kernel call in session 12, the same at (c)). The tests with a 420 s limit, then the engine's
# tests with the default, for comparison of their times.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/producer_verify.sh", timeout_s=560)
set -uo pipefail
DEADLINE=550
. bench/device/setup.sh
FMOE_CUDA_PRODUCER=1 pytests 420 tests/kernels/test_cuda_qmv.py tests/engine/test_cuda.py tests/bench/test_stream_cuda.py
pytests 110 tests/engine/test_cuda.py
echo "done at $SECONDS s" | tee -a "$R"
