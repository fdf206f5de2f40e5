#!/usr/bin/env bash
# Session 14, call 1 (written in session 13 as split_last.sh; the variant, 0.1 us slower, is removed since): the whole-
# rows kernel with a block's last unit over all its warps (cuda_qmv.BULK_WHOLE_SPLIT_LAST, FMOE_CUDA_WHOLE_SPLIT_LAST=1,
# the kernel's PROD 3; off by default: the default instances' SASS is unchanged). At decode's 10 rows a block has 5
# units of 64 rows: 4 warp groups take one each, and the fifth, the last to land, takes one group a whole tile's
# products (0.63 us) after its bytes arrive; split over the 4 groups (a quarter of the inputs each, sums added on a
# named barrier) that tail should be ~0.2 us, about what the down projection lacks for 0.7 of HBM (8.2-8.4 us, needs <=
# 7.97).
# 1. its launch-mode tests and session 13's last whole-rows test (-x; both written after session 13's last call);
# 2. timelines and graph timings at 10 rows, 1 and 64 rows timed, against the default (whole-t4-sall);
# 3. bench/device/tma_probe.py: how soon a block's first bytes land, one block alone or one an SM (the down
#    projection's first stage lands 3.2-3.4 us after entry, session 13);
# 4. if it is >= 0.2 us faster at 10 rows: the whole CUDA suite, the kernel table and (c) with it on (what making it
#    the default needs), and (c) with the defaults; else only the engine's tests with it on.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/split_last.sh", timeout_s=580)
set -uo pipefail
DEADLINE=570
. bench/device/setup.sh
synth_c60
pytests 90 -x --tb=short tests/kernels/test_cuda_qmv.py -k "launch_modes and last or falls_back"
V="whole-t4-sall whole-t4-split-last whole-t8-sall whole-t8-split-last"
say "python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V"
timeout 60 python3 bench/device/bulk_timeline.py --rows 10 --time --variants $V 2>&1 | grep -v "^cold" \
    | grep -v "^.* 1024x4096" | tee /tmp/timeline10.txt >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 1 64 --time --no-trace --variants $V"
timeout 40 python3 bench/device/bulk_timeline.py --rows 1 64 --time --no-trace --variants $V 2>&1 \
    | grep -v "^.* 1024x4096" >> "$R"
echo "[rows 1 64 rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/tma_probe.py (how soon a block's first bytes land: one block or one an SM, bulk copies or loads)"
timeout 40 python3 bench/device/tma_probe.py >> "$R" 2>&1
echo "[tma_probe rc=$? at $SECONDS s]" | tee -a "$R"
us() { awk -v v="$1:" '$1 == "timed" && $5 == v {print $6}' /tmp/timeline10.txt; }
BASE=$(us whole-t4-sall); SPLIT=$(us whole-t4-split-last)
echo "10 rows: whole-t4-sall ${BASE:-?} us, whole-t4-split-last ${SPLIT:-?} us" | tee -a "$R"
if [ -n "$BASE" ] && [ -n "$SPLIT" ] && awk -v a="$BASE" -v b="$SPLIT" 'BEGIN {exit !(b <= a - 0.2)}'; then
    export FMOE_CUDA_WHOLE_SPLIT_LAST=1
    pytests 300 -x --tb=short tests/kernels/test_cuda_qmv.py tests/engine/test_cuda.py tests/bench/test_stream_cuda.py
    cp /tmp/pytests.txt "$OUT/pytest_split_last.txt"
    say "FMOE_CUDA_WHOLE_SPLIT_LAST=1 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
    mkdir -p "$OUT/kernels_split_last"
    timeout 60 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT/kernels_split_last" \
        > /tmp/k.txt 2>&1
    echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
    synth_c60_wait
    bench c_60x64_vram_split_last 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router \
        --gpu-memory-budget 40GB --tokens 16 --warmup 4
    unset FMOE_CUDA_WHOLE_SPLIT_LAST
    bench c_60x64_vram_default 40 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router \
        --gpu-memory-budget 40GB --tokens 16 --warmup 4
else
    FMOE_CUDA_WHOLE_SPLIT_LAST=1 pytests 110 -x --tb=short tests/engine/test_cuda.py
fi
echo "done at $SECONDS s" | tee -a "$R"
