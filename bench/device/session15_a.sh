#!/usr/bin/env bash
# Session 15, call 1: the kernel table with the layer's decode pair (gate+up then down, as the engine launches them:
# fmoe/bench/cuda_kernels.py measure_pair) and its report test; then, on the 16-core host with the GPU hidden, the
# CPU decode's native RMSNorm (session 14's bench/device/session14_f.sh, not run then): its tests on AVX-512, the A/B of
# the time outside the kernels, `fmoe bench decode` twice.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session15_a.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
synth_s12
say "python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write \$OUT/kernels"
mkdir -p "$OUT/kernels"
timeout 90 python3 -m fmoe.bench.cuda_kernels --bits 4 --no-triton --write "$OUT/kernels" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; cat /tmp/k.txt >> "$R"
pytests 60 --tb=short tests/bench/test_cuda_kernels_report.py
export CUDA_VISIBLE_DEVICES="" FMOE_THREADS=16
pytests 60 --tb=short tests/kernels/test_isa_variants.py -k "rms_norm"
synth_s12_wait
say "python3 bench/device/native_norm_ab.py /tmp/s12 6"
timeout 60 python3 bench/device/native_norm_ab.py /tmp/s12 6 >> "$R" 2>&1
echo "[ab rc=$? at $SECONDS s]" | tee -a "$R"
for i in 1 2; do decode_t16 $i; done
echo "done at $SECONDS s" | tee -a "$R"
