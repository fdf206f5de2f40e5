#!/usr/bin/env bash
# Session 8, fourth H200 call. Issue 13: the kernel tests and engine tests on the final dispatch (tensor cores for one
# matrix, FMA for gate+up), the kernel table at 4 bits with the same-size copy peer, (c) 60 x 64 all in VRAM.
# Issue 14 (CPU only, GPU idle): the one-matrix bench at 16 threads with the default chunking and with 16-row chunks.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_d.sh", timeout_s=560)
set -uo pipefail
DEADLINE=540
. bench/device/setup.sh
say "pytest tests/kernels/test_cuda_qmv.py"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
rc=$?; tail -30 /tmp/t.txt >> "$R"; tail -3 /tmp/t.txt
[ $rc -ne 0 ] && exit 1
say "python3 -m fmoe.bench.cuda_kernels --bits 4"
timeout 90 python3 -m fmoe.bench.cuda_kernels --bits 4 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -30 | tee -a "$R"
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py \
    > /tmp/e.txt 2>&1; echo "[engine tests rc=$?]" | tee -a "$R"; grep -E "passed|failed|Error|error" /tmp/e.txt | tail -8 | tee -a "$R"
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
rm -rf /tmp/c60
for v in default grain16; do
  F=""; [ $v = grain16 ] && F="-DFMOE_GRAIN=16 -DFMOE_CHUNK_BYTES=32768"
  say "FMOE_QMV_CFLAGS='$F' python3 bench/device/cpu_call_overhead.py --threads 16 ($v)"
  FMOE_QMV_CFLAGS="$F" CUDA_VISIBLE_DEVICES="" timeout 100 python3 bench/device/cpu_call_overhead.py --threads 16 \
      --json "$OUT/cpu_$v.json" > /tmp/ov_$v.txt 2>&1; echo "[cpu $v rc=$? at $SECONDS s]" | tee -a "$R"
  grep -A3 "^| threads" /tmp/ov_$v.txt | tail -2 | tee -a "$R"
done
echo "done at $SECONDS s" | tee -a "$R"
