#!/usr/bin/env bash
# Session 8, last H200 call: the kernel table at 4 bits on the final dispatch (tensor cores "mma-k256" for one
# matrix, FMA for gate+up) with the read-only and copy peers of the same size; then (a) 12 layers x 512 experts,
# top-10 uniform, 24 GB-scaled VRAM budget.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_f.sh", timeout_s=480)
set -uo pipefail
DEADLINE=460
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_a12.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_a12.txt ) &
SYN=$!
say "python3 -m fmoe.bench.cuda_kernels --bits 4"
timeout 150 python3 -m fmoe.bench.cuda_kernels --bits 4 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -40 | tee -a "$R"
say "pytest tests/kernels/test_cuda_qmv.py -k 'agree or graph or front'"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_qmv.py -k "agree or graph or front" 2>&1 \
    | tail -3 | tee -a "$R"
wait $SYN; tail -2 /tmp/synth_a12.txt | tee -a "$R"
bench a_top10_uniform_24GB 90 --model-dir /tmp/a12 --mode page-cache --top-k 10 --routing uniform \
    --gpu-memory-budget 24GB --tokens 12 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
