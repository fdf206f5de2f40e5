#!/usr/bin/env bash
# Session 13, call 4: whole rows a warp for the down projection (cuda_qmv.BULK_WHOLE_ROWS, FMOE_CUDA_WHOLE_ROWS, the
# kernel's PROD 2: one warp a 16-row tile over all 1024 inputs, units of T tiles, no barrier between warps, a block's
# units all in flight where they fit), against the default and the producer warp. Its tests (-x), timelines and graph
# timings at 10 rows, 64 and 1 row timed; then, if its tests passed, the whole GPU suite, the kernel table and (c)
# with FMOE_CUDA_PRODUCER=1 FMOE_CUDA_WHOLE_ROWS=4, and (c) with the defaults.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session13_d.sh", timeout_s=560)
set -uo pipefail
DEADLINE=550
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
pytests 120 -x --tb=short tests/kernels/test_cuda_qmv.py -k "launch_modes and whole"
OK=$(grep -c "^\[pytest rc=0" "$R")
V="slots-ready producer-slots-ready producer-s2-t4 whole-t4-sall whole-t2-sall whole-t8-sall whole-t1-sall
   whole-t2-s8"
say "python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V"
timeout 90 python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V 2>&1 | grep -v "^cold" >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V"
timeout 60 python3 bench/device/bulk_timeline.py --rows 64 1 --time --no-trace --variants $V >> "$R" 2>&1
echo "[rows 64 1 rc=$? at $SECONDS s]" | tee -a "$R"
if [ "$OK" = 1 ]; then
    export FMOE_CUDA_PRODUCER=1 FMOE_CUDA_WHOLE_ROWS=4
    pytests 280 -x --tb=short tests/kernels/test_cuda_qmv.py tests/engine/test_cuda.py tests/bench/test_stream_cuda.py
    cp /tmp/pytests.txt "$OUT/pytest_producer_whole4.txt"
    say "FMOE_CUDA_PRODUCER=1 FMOE_CUDA_WHOLE_ROWS=4 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
    mkdir -p "$OUT/kernels_whole4"
    timeout 80 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT/kernels_whole4" > /tmp/k.txt 2>&1
    echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
    wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
    bench c_60x64_vram_whole4 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router \
        --gpu-memory-budget 40GB --tokens 16 --warmup 4
    unset FMOE_CUDA_PRODUCER FMOE_CUDA_WHOLE_ROWS
    bench c_60x64_vram_default 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router \
        --gpu-memory-budget 40GB --tokens 16 --warmup 4
fi
echo "done at $SECONDS s" | tee -a "$R"
