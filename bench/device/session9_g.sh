#!/usr/bin/env bash
# Session 9, call 8: the bulk-copy kernel with its products taken out (are the copies the limit?), then the kernel
# table as committed (overlapping launches on; the Triton unit kernel the default at 3 bits; bulk rows).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_g.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
say "python3 bench/device/qmv_overlap.py --bulk-copies"
timeout 60 python3 bench/device/qmv_overlap.py --bulk-copies >> "$R" 2>&1
echo "[bulk-copies rc=$? at $SECONDS s]" | tee -a "$R"
say "python3 -m fmoe.bench.cuda_kernels --bits 4 3"
timeout 200 python3 -m fmoe.bench.cuda_kernels --bits 4 3 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
echo "done at $SECONDS s" | tee -a "$R"
