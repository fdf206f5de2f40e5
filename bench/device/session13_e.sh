#!/usr/bin/env bash
# Session 13, call 5: the committed defaults (producer warp on; one matrix of 512/1024 inputs by whole rows a warp,
# units of 4 tiles, a buffer a unit of a block where they fit). Timelines and graph timings of the down projection's
# variants at 10 rows (whole rows: units of 1, 2, 4, 8 tiles; buffers as fit or capped; the inputs split over warps;
# thread 0 issuing), 64 and 1 rows timed; the kernel table; the whole GPU suite (-x); (c) 60 x 64 all in VRAM.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session13_e.sh", timeout_s=580)
set -uo pipefail
DEADLINE=570
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
V="thread0-slots-ready split-slots-ready split-t4-slots-ready whole-t4-sall whole-t4-s4 whole-t2-sall whole-t2-s8
   whole-t1-sall whole-t8-sall"
say "python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V"
timeout 90 python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V 2>&1 | grep -v "^cold" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V"
timeout 60 python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V >> "$R" 2>&1
echo "[rows 64 1 rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
mkdir -p "$OUT/kernels"
timeout 60 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT/kernels" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
pytests 330 -x --tb=short tests/kernels/test_cuda_qmv.py tests/engine/test_cuda.py tests/bench/test_stream_cuda.py
cp /tmp/pytests.txt "$OUT/pytest_gpu.txt"
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
