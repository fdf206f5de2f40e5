#!/usr/bin/env bash
# The session's last H200 call (about 3 minutes): the CUDA tests on the final code, then issue 14 on the 16-core host
# (CPU only): the 4-bit mat-vec at 16 threads and warm in-RAM decode of a 12-layer 397B-shaped model.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/final_check.sh")
set -uo pipefail
. bench/device/setup.sh
( python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force --no-progress \
    --no-tokenizer > "$OUT/synth.txt" 2>&1; echo "synth rc=$?" >> "$OUT/synth.txt" ) &
SYN=$!
echo "+ pytest tests/engine/test_cuda.py tests/kernels/test_triton_*.py -k 'graph or page-cache-None or direct-1 or triton'" > "$OUT/report.txt"
timeout 85 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/kernels/test_triton_qmv.py \
    tests/kernels/test_triton_norm.py tests/kernels/test_triton_deltanet.py \
    -k "graph or page-cache-None or direct-1 or qmv or norm or decode_step" 2>&1 | tail -4 >> "$OUT/report.txt"
wait $SYN; cat "$OUT/synth.txt" >> "$OUT/report.txt"
export CUDA_VISIBLE_DEVICES=""
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200; } >> "$OUT/report.txt"
echo "+ FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 6 --warm 4 --json" >> "$OUT/report.txt"
FMOE_THREADS=16 timeout 55 python3 -m fmoe bench decode --model /tmp/s12 --tokens 6 --warm 4 --json >> "$OUT/report.txt" 2>&1
echo "+ fmoe bench kernels --threads 16 --bits 4 --quick --json" >> "$OUT/report.txt"
timeout 30 python3 -m fmoe bench kernels --threads 16 --bits 4 --quick --json >> "$OUT/report.txt" 2>&1
cat "$OUT/report.txt"
