#!/usr/bin/env bash
# Session 8, third H200 call: fmoe_qmv4_stream (persistent tensor-core decode kernel). Its parity tests (on failure:
# stop with the report), the kernel table at 4 bits (streamed, one item a warp, the FMA kernel, Triton), then the
# engine's CUDA tests and (c) 60 layers x 64 experts all in VRAM.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_c.sh", timeout_s=500)
set -uo pipefail
DEADLINE=480
. bench/device/setup.sh
say "pytest tests/kernels/test_cuda_qmv.py"
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
rc=$?; tail -40 /tmp/t.txt >> "$R"; tail -3 /tmp/t.txt
[ $rc -ne 0 ] && exit 1
say "python3 -m fmoe.bench.cuda_kernels --bits 4"
timeout 90 python3 -m fmoe.bench.cuda_kernels --bits 4 --write "$OUT" > /tmp/k.txt 2>&1
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
