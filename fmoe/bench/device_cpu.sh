#!/usr/bin/env bash
# CPU measurements of issue #14 on a many-core host (the H200 machine's host; CPU only, no GPU used), < 8 min:
#   1. build every kernel variant (avx512 / avx2 / generic) and run the variant parity tests (tests/kernels),
#   2. `fmoe bench kernels` with FMOE_THREADS = 1, 2, 4, 8, 16 (4 bits at 1-8 threads; all widths at 16),
#   3. `fmoe synth --like qwen3.5-397b-a17b --layers 12 --experts 64` to /tmp, then decode warm in RAM with
#      `fmoe bench decode --model` (kernels vs the rest per token, ratio to the memory bound), one call per layer's
#      experts (default) and per matrix (FMOE_FUSED=0), 16 threads.  The synth runs in the background during step 1.
# Needs python3 with numpy + torch (+ pytest for step 1, safetensors/tokenizers as the synth needs); no network.
# Usage (repo root):  OUT=/some/dir bash fmoe/bench/device_cpu.sh      results: $OUT/*.json, $OUT/summary.md
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/fmoe-device-cpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FMOE_CACHE_DIR=${FMOE_CACHE_DIR:-/tmp/fmoe-cache}
export CUDA_VISIBLE_DEVICES=""
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/log.txt"; }
# timeout for a step: at most $1 s, and never past the 460 s budget of the whole script
tmo() { local left=$(( 460 - ($(date +%s) - T0) )); [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"; }

{ lscpu; echo; nproc; free -g; $PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
log "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) nproc=$(nproc)"

# smaller runs for a dry run elsewhere: FMOE_DEV_LAYERS=1 FMOE_DEV_EXPERTS=8 FMOE_DEV_THREADS="1 2" FMOE_DEV_MAX=2
LAYERS=${FMOE_DEV_LAYERS:-12}; EXPERTS=${FMOE_DEV_EXPERTS:-64}; MAXT=${FMOE_DEV_MAX:-16}
M=/tmp/fmoe-q397-${LAYERS}x${EXPERTS}
log "0. synth the 12-layer 397B-shaped model to $M in the background (while kernels build and tests run)"
if [ ! -f "$M/.synth-done" ]; then
  ( timeout 300 $PY -m fmoe synth "$M" --like qwen3.5-397b-a17b --layers "$LAYERS" --experts "$EXPERTS" --force --no-progress --no-tokenizer \
      > "$OUT/synth.txt" 2>&1 && touch "$M/.synth-done" ) &
  SYNTH_PID=$!
fi

log "1. build the kernel variants (in parallel)"
BPIDS=""
for isa in avx512 avx2 generic; do
  timeout 150 $PY -c "from fmoe.kernels import native; print('$isa', native.build(isa='$isa'))" >> "$OUT/build.txt" 2>&1 &
  BPIDS="$BPIDS $!"
done
wait $BPIDS
timeout 60 $PY -c "
from fmoe.kernels import native
print('supported', native.supported_isas(), 'loaded', native.kernel_isa(), 'physical cores', native.physical_cores())
" >> "$OUT/build.txt" 2>&1
cat "$OUT/build.txt" | tee -a "$OUT/log.txt"
if $PY -c "import pytest, mlx.core" 2>/dev/null; then
  timeout 120 $PY -m pytest -q -x tests/kernels -k "isa or fused or builds or sparse" -p no:cacheprovider \
    > "$OUT/tests.txt" 2>&1; log "variant tests rc=$? $(tail -1 "$OUT/tests.txt")"
elif $PY -c "import pytest" 2>/dev/null; then
  log "mlx not installed: tests/kernels skips itself; running the variant check inline"
  timeout 120 $PY - > "$OUT/tests.txt" 2>&1 <<'PYEOF'
import numpy as np, torch
from fmoe.kernels import native
from fmoe.kernels.quant import quantize, dequantize
from fmoe.kernels.torch_qlinear import TorchQLinear, FusedExperts
rng = np.random.default_rng(0)
bad = 0
for isa in native.supported_isas():
    lib = native.load(isa)
    for bits in (2, 3, 4, 5, 6, 8):
        for gs in (32, 64, 128):
            q = quantize(rng.standard_normal((70, 512)).astype(np.float32) * 0.05, bits, gs)
            L = TorchQLinear(q); L._lib, L._fn = lib, lib.fmoe_qmv
            x = torch.randn(5, 512); ref = x @ torch.from_numpy(dequantize(q)).t()
            for mode, tol in ((0, 1e-3), (1, 1e-5), (2, 1e-5)):
                err = float((L._native(x, mode=mode) - ref).abs().max() / ref.abs().max())
                if err > tol: bad += 1; print("FAIL", isa, bits, gs, mode, err)
    print(isa, lib.fmoe_qmv_isa().decode(), "checked")
print("failures", bad)
PYEOF
  log "variant check: $(tail -1 "$OUT/tests.txt")"
fi

if [ -n "${SYNTH_PID:-}" ]; then
  log "waiting for the synth (no measurement runs beside it)"; wait "$SYNTH_PID"
  log "synth rc=$? $(du -sh "$M" 2>/dev/null | cut -f1) $(tail -2 "$OUT/synth.txt" | tr '\n' ' ')"
fi

log "2. fmoe bench kernels, thread scaling"
for t in ${FMOE_DEV_THREADS:-1 2 4 8}; do
  FMOE_THREADS=$t timeout "$(tmo 50)" $PY -m fmoe bench kernels --json --threads $t --bits 4 --no-lm-head \
    --repeats 3 > "$OUT/kernels_t$t.json" 2> "$OUT/kernels_t$t.err"; log "threads=$t rc=$?"
done
FMOE_THREADS=$MAXT timeout "$(tmo 110)" $PY -m fmoe bench kernels --threads "$MAXT" --repeats 4 \
  --write "$OUT/kernels_tmax" > "$OUT/kernels_tmax.txt" 2>&1; log "threads=$MAXT rc=$?"

log "3. decode warm in RAM"
for cfg in "$MAXT 1" "$MAXT 0"; do
  set -- $cfg
  FMOE_THREADS=$1 FMOE_FUSED=$2 timeout "$(tmo 75)" $PY -m fmoe bench decode --model "$M" --tokens 10 --warm 12 \
    --memory-budget-gb 64 --json > "$OUT/decode_t$1_fused$2.json" 2> "$OUT/decode_t$1_fused$2.err"
  log "decode threads=$1 fused=$2 rc=$? $(tail -c 400 "$OUT/decode_t$1_fused$2.json")"
done

$PY - "$OUT" > "$OUT/summary.md" 2>&1 <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("# fmoe CPU measurements (issue #14)\n")
print("| threads | mem read GB/s | 4-bit cold GB/s | ratio | 10 experts one call GB/s | ratio | kernel |")
print("|---:|---:|---:|---:|---:|---:|---|")
for t in (1, 2, 4, 8, "max"):
    p = out / (f"kernels_t{t}.json" if t != "max" else "kernels_tmax/kernels.json")
    try:
        txt = p.read_text(); r = json.loads(txt[txt.index("{"):])
    except Exception as e:
        print(f"| {t} | ({type(e).__name__}) | | | | | |"); continue
    b4 = r["bits"]["4"]; fz = r.get("experts_fused_4bit", {})
    print(f"| {r['threads']} | {r['mem_read_gbps']:.1f} | {b4['gbps']:.1f} | {b4['ratio']:.2f} | "
          f"{fz.get('fused_gbps', 0):.1f} | {fz.get('ratio', 0):.2f} | {r['kernel']} |")
print("\n| decode | ms/token best | median | kernels ms | rest ms | MB/token | bound ms | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for p in sorted(out.glob("decode_*.json")):
    try:
        r = json.loads(p.read_text().strip().splitlines()[-1])
    except Exception as e:
        print(f"| {p.stem} | ({type(e).__name__}) |"); continue
    print(f"| {p.stem} | {r['ms_per_token_best']:.1f} | {r['ms_per_token_median']:.1f} | "
          f"{r['kernel_ms_best_token']:.1f} | {r['rest_ms_best_token']:.1f} | {r['weight_bytes_per_token']/1e6:.0f} | "
          f"{r['memory_bound_ms']:.1f} | {r['ratio_to_memory_bound_best']:.2f} |")
PYEOF
cat "$OUT/summary.md"
log "done"
