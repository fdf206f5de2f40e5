#!/usr/bin/env bash
# Ran at commit 0ef5aff (its kernel and bulk_timeline.py variants; the losing ones were removed after call 3).
# Session 11, call 1: the bulk-copy kernel's launch modes (cuda_qmv's BULK_DEFER: a block's units all copied at
# entry and one barrier between its warps; BULK_STAGGER; BULK_EARLY copies before the wait of programmatic dependent
# launch; one or two tiles a warp). First every bulk test (the new modes test against the FMA kernel), then each
# variant's parity, warm/cold timelines and graph timing at decode (10 rows, gate+up too), then 64 rows timed.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_a.sh", timeout_s=590)
set -uo pipefail
DEADLINE=580
. bench/device/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader >> "$R" 2>&1
pytests 200 tests/kernels/test_cuda_qmv.py -k "bulk or compiles"
say "python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants (all)"
timeout 200 python3 bench/device/bulk_timeline.py --rows 10 --gate-up --time --variants base stagger tpw1 defer2 \
    defer1 defer1-stagger pdl pdl-early defer2-pdl-early defer1-pdl-early >> "$R" 2>&1
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants base defer1 pdl-early defer1-pdl-early"
timeout $(( $(left) - 5 )) python3 bench/device/bulk_timeline.py --rows 64 --time --no-trace --variants base defer1 \
    pdl-early defer1-pdl-early >> "$R" 2>&1
echo "[rows 64 rc=$? at $SECONDS s]" | tee -a "$R"
