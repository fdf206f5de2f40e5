#!/usr/bin/env bash
# Session 8, first H200 call. Issue 14 on the 16-core host first (CPU only, quiet): the one-matrix 4-bit mat-vec with
# the pool's lock-free worker start (bench/device/cpu_call_overhead.py) and the thread scaling table of `fmoe bench
# kernels`. Then issue 13: the CUDA tests on session 7's last GPU-side edits (checked offline only so far) and the
# kernel table at 4 and 3 bits (the Triton byte kernel's new launch configuration).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_a.sh", timeout_s=420)
set -uo pipefail
DEADLINE=400
. bench/device/setup.sh
{ lscpu | grep -E "Model name|^CPU\(s\)" ; nvidia-smi --query-gpu=name --format=csv,noheader; } >> "$R" 2>&1
say "python3 bench/device/cpu_call_overhead.py --threads 16 8"
CUDA_VISIBLE_DEVICES="" timeout 90 python3 bench/device/cpu_call_overhead.py --threads 16 8 --json "$OUT/cpu_call_overhead.json" \
    --markdown "$OUT/cpu_call_overhead.md" > /tmp/ov.txt 2>&1; echo "[overhead rc=$? at $SECONDS s]" | tee -a "$R"
tail -12 /tmp/ov.txt >> "$R"
for t in 16 8 4 2 1; do
  say "fmoe bench kernels --threads $t --bits 4 --quick --json"
  CUDA_VISIBLE_DEVICES="" timeout 40 python3 -m fmoe bench kernels --threads $t --bits 4 --quick --json > "$OUT/kernels_t$t.json" 2>&1
  echo "[kernels t=$t rc=$? at $SECONDS s]" | tee -a "$R"
done
say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py \
    tests/kernels/test_cuda_qmv.py tests/kernels/test_triton_qmv.py 2>&1 | tail -15 | tee -a "$R" | tail -2
say "python3 -m fmoe.bench.cuda_kernels --bits 4 3"
timeout 60 python3 -m fmoe.bench.cuda_kernels --bits 4 3 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
echo "done at $SECONDS s" | tee -a "$R"
