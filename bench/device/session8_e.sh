#!/usr/bin/env bash
# Session 8, fifth H200 call: the variants of the tensor-core kernel (inputs per warp, per-warp x staging, blocks per
# SM). Kernel tests, the kernel table with every variant, then the fastest variant at decode (10 rows, both shapes;
# and for gate+up against the FMA kernel) becomes MMA_DEFAULT in this copy (printed), and the engine tests and (c)
# 60 x 64 all in VRAM run on it.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_e.sh", timeout_s=560)
set -uo pipefail
DEADLINE=540
. bench/device/setup.sh
say "pytest tests/kernels/test_cuda_qmv.py"
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
rc=$?; tail -30 /tmp/t.txt >> "$R"; tail -3 /tmp/t.txt
[ $rc -ne 0 ] && exit 1
say "python3 -m fmoe.bench.cuda_kernels --bits 4"
timeout 150 python3 -m fmoe.bench.cuda_kernels --bits 4 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -40 | tee -a "$R"
python3 - "$OUT/cuda_kernels.json" <<'PY' | tee -a "$R"
import json, re, sys
rows = json.load(open(sys.argv[1]))["rows"]
def t(k, gu):
    sel = [r["seconds"] for r in rows if r["rows"] == 10 and r["kernel"] == k]
    return sum(sel) if len(sel) == (1 if gu else 2) else None
one = {k[5:]: t(k, False) for k in {r["kernel"] for r in rows} if k.startswith("cuda mma") and "gate" not in k}
one["mma"] = t("cuda", False)
best1 = min((v, k) for k, v in one.items() if v)[1]
gu = {"fma": t("cuda gate+up", True), "mma": t("cuda mma gate+up", True), "mma-ws": t("cuda mma-ws gate+up", True)}
best2 = min((v, k) for k, v in gu.items() if v)[1]
print("decode sums (us):", {k: round(v * 1e6, 1) for k, v in one.items() if v}, {k: round(v * 1e6, 1) for k, v in gu.items() if v})
print(f"MMA_DEFAULT = {{False: {best1!r}, True: {None if best2 == 'fma' else best2!r}}}")
p = "fmoe/kernels/cuda_qmv.py"; s = open(p).read()
s = re.sub(r"MMA_DEFAULT = \{[^}]*\}", f"MMA_DEFAULT = {{False: {best1!r}, True: {None if best2 == 'fma' else best2!r}}}", s)
open(p, "w").write(s)
PY
( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
SYN=$!
say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py \
    > /tmp/e.txt 2>&1; echo "[engine tests rc=$?]" | tee -a "$R"; grep -E "passed|failed|Error|error" /tmp/e.txt | tail -8 | tee -a "$R"
wait $SYN; tail -2 /tmp/synth_c60.txt | tee -a "$R"
bench c_60x64_vram 60 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
