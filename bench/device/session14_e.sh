#!/usr/bin/env bash
# Session 14, call 5: the native CPU kernel's AVX-512 VNNI variant on the H200 machine's Xeon host (no GPU used). Its
# VNNI code paths (vpdpbusd / vpdpwssd in the 2/3/4-bit decode kernels) cannot run on the 2-core AVX2 VM, and the
# kernels changed in sessions 10-12 after their last check on an AVX-512 host (session 6's inline check): the variant
# tests (tests/kernels/test_isa_variants.py: every variant this CPU runs against dequantize + matmul, rows / chunks /
# threads bit-identical, fused experts), then `fmoe bench kernels` at 1, 2, 4, 8, 16 threads (4 bits).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session14_e.sh", timeout_s=340)
set -uo pipefail
DEADLINE=330
. bench/device/setup.sh
export CUDA_VISIBLE_DEVICES=""
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400; uptime; } >> "$R" 2>&1
say "build the variants (avx512, avx2, generic)"
for isa in avx512 avx2 generic; do
    timeout 150 python3 -c "from fmoe.kernels import native; print('$isa', native.build(isa='$isa'))" \
        >> /tmp/build.txt 2>&1 &
done
wait
python3 -c "from fmoe.kernels import native; print('supported', native.supported_isas(), 'loaded', \
    native.kernel_isa())" >> /tmp/build.txt 2>&1
cat /tmp/build.txt >> "$R"; echo "[builds at $SECONDS s]" | tee -a "$R"
pytests 180 --tb=short -rs tests/kernels/test_isa_variants.py -k "not one_object"
cp /tmp/pytests.txt "$OUT/pytest_isa_variants.txt"
for t in 1 2 4 8 16; do
    [ "$(left)" -lt 25 ] && { echo "skipped threads=$t: deadline" | tee -a "$R"; break; }
    say "fmoe bench kernels --json --threads $t --bits 4 --no-lm-head --repeats 3"
    FMOE_THREADS=$t timeout 40 python3 -m fmoe bench kernels --json --threads $t --bits 4 --no-lm-head --repeats 3 \
        > "$OUT/kernels_t$t.json" 2> /tmp/k_err.txt
    echo "[threads=$t rc=$? at $SECONDS s]" | tee -a "$R"; tail -2 /tmp/k_err.txt >> "$R"
done
echo "done at $SECONDS s" | tee -a "$R"
