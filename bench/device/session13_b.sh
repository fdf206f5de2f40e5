#!/usr/bin/env bash
# Session 13, call 2: does a block's first stage land late (3.2-3.5 us after entry at 4096 x 1024, 10 rows, even with
# one unit in flight a block) for the pages' address translations? Warm traces with and without a 4-byte read every
# 64 rows of the traced slots just before (the translations, ~1/128 of the bytes in L2).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session13_b.sh", timeout_s=200)
set -uo pipefail
DEADLINE=190
. bench/device/setup.sh
V="slots-ready producer-slots-ready paced-s2-d1-l0 paced-s3-d2-l0"
say "python3 bench/device/bulk_timeline.py --rows 10 64 --gate-up --touch --variants $V"
timeout 150 python3 bench/device/bulk_timeline.py --rows 10 64 --gate-up --touch --variants $V 2>&1 >> "$R"
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
