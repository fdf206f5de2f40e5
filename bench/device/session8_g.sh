#!/usr/bin/env bash
# Session 8, last H200 call: the tensor-core kernel with its codes brought into shared memory by cp.async (variants
# "mma-cp", "mma-cp256": no registers held by the loads in flight, 4 / 3 blocks an SM). Variant parity against the
# FMA kernel, the kernel table; if a cp.async variant is the fastest one-matrix kernel at decode it becomes
# MMA_DEFAULT in this copy (printed) and the engine tests and (c) run on it.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_g.sh", timeout_s=360)
set -uo pipefail
DEADLINE=340
. bench/device/setup.sh
say "pytest tests/kernels/test_cuda_qmv.py -k 'agree or graph or front'"
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py -k "agree or graph or front" \
    > /tmp/t.txt 2>&1; rc=$?; tail -25 /tmp/t.txt >> "$R"; tail -3 /tmp/t.txt
[ $rc -ne 0 ] && exit 1
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton"
timeout 100 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -40 | tee -a "$R"
python3 - "$OUT/cuda_kernels.json" <<'PY' | tee -a "$R"
import json, re, sys
rows = json.load(open(sys.argv[1]))["rows"]
def t(k):
    sel = [r["seconds"] for r in rows if r["rows"] == 10 and r["kernel"] == k]
    return sum(sel) if len(sel) == 2 else None
one = {k[5:]: t(k) for k in {r["kernel"] for r in rows} if k.startswith("cuda mma") and "gate" not in k}
one["mma-k256"] = t("cuda")
best = min((v, k) for k, v in one.items() if v)[1]
print("decode sums (us):", {k: round(v * 1e6, 1) for k, v in one.items() if v}, "best:", best)
if "cp" in best:
    p = "fmoe/kernels/cuda_qmv.py"; s = open(p).read()
    s = re.sub(r'MMA_DEFAULT = \{False: "mma-k256"', f'MMA_DEFAULT = {{False: "{best}"', s)
    open(p, "w").write(s)
    print("MMA_DEFAULT[False] =", best)
    open("/tmp/cp_default", "w").write(best)
PY
if [ -f /tmp/cp_default ]; then
  ( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
      --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
  SYN=$!
  say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py (default $(cat /tmp/cp_default))"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py \
      > /tmp/e.txt 2>&1; echo "[engine tests rc=$?]" | tee -a "$R"; grep -E "passed|failed|Error" /tmp/e.txt | tail -6 | tee -a "$R"
  wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
  bench c_60x64_vram 50 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
      --tokens 16 --warmup 4
fi
echo "done at $SECONDS s" | tee -a "$R"
