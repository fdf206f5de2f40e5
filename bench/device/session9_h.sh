#!/usr/bin/env bash
# Session 9, call 9: issue 14 on the 16-core host (the one-matrix 4-bit mat-vec after session 8's pool claim-word
# fix, not measured since; CPU only), then issue 13: the bulk-copy kernel with two 16-row tiles a warp (they share
# its activation fragments; ~13 instead of ~16 issued instructions per mma), its tests and its timing.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session9_h.sh", timeout_s=360)
set -uo pipefail
DEADLINE=350
. bench/device/setup.sh
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200; uptime; } >> "$R" 2>&1
say "python3 bench/device/cpu_call_overhead.py --threads 16 8"
CUDA_VISIBLE_DEVICES="" timeout 100 python3 bench/device/cpu_call_overhead.py --threads 16 8 \
    --json "$OUT/cpu_call_overhead.json" --markdown "$OUT/cpu_call_overhead.md" > /tmp/ov.txt 2>&1
echo "[overhead rc=$? at $SECONDS s]" | tee -a "$R"; tail -12 /tmp/ov.txt >> "$R"
say "fmoe bench kernels --threads 16 --bits 4 --quick --json"
CUDA_VISIBLE_DEVICES="" timeout 40 python3 -m fmoe bench kernels --threads 16 --bits 4 --quick --json \
    > "$OUT/kernels_t16.json" 2>&1; echo "[kernels t=16 rc=$? at $SECONDS s]" | tee -a "$R"
say "pytest -k bulk tests/kernels/test_cuda_qmv.py"
timeout 100 python3 -m pytest -q -x -p no:cacheprovider -k "bulk" tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
echo "[tests rc=$? at $SECONDS s]" | tee -a "$R"; grep -E "^(FAILED|ERROR)|passed|failed" /tmp/t.txt | head -20 >> "$R"
grep -n -m1 -B2 -A40 "^_\{5,\} " /tmp/t.txt | head -60 >> "$R"
say "python3 bench/device/qmv_overlap.py --bulk --stages 2 3"
timeout 60 python3 bench/device/qmv_overlap.py --bulk --stages 2 3 >> "$R" 2>&1
echo "[bulk rc=$? at $SECONDS s]" | tee -a "$R"
echo "done at $SECONDS s" | tee -a "$R"
