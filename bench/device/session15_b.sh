#!/usr/bin/env bash
# Session 15, call 2: the CPU kernel of this session on the H200 machine's 16-core Xeon host (no GPU used): the
# AVX-512 build's decode rows two to a 512-bit register (row2_defer_zmm / row34_defer_zmm, 3-bit long-row quads) and
# the kernel's read-only peer in the memory read bandwidth (fmoe_read_bytes). The variant tests, `fmoe bench kernels`
# (2/3/4/8 bits at 16 threads, twice; 4 bits at 1-16 threads), `fmoe bench decode` of the 12-layer 397B shape twice.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session15_b.sh", timeout_s=400)
set -uo pipefail
DEADLINE=390
. bench/device/setup.sh
export CUDA_VISIBLE_DEVICES=""
{ lscpu | grep -E "Model name|^CPU\(s\)" | cut -c1-200; uptime; } >> "$R" 2>&1
synth_s12
for isa in avx512 avx2 generic; do
    timeout 150 python3 -c "from fmoe.kernels import native; print('$isa', native.build(isa='$isa'))" \
        >> /tmp/build.txt 2>&1 &
done
wait $(jobs -p | grep -v "^$SYN$")
cat /tmp/build.txt >> "$R"; echo "[builds at $SECONDS s]" | tee -a "$R"
pytests 150 --tb=short -rs tests/kernels/test_isa_variants.py -k "not one_object"
cp /tmp/pytests.txt "$OUT/pytest_isa_variants.txt"
synth_s12_wait
for i in 1 2; do
    [ "$(left)" -lt 40 ] && { echo "skipped kernels run $i: deadline" | tee -a "$R"; break; }
    say "FMOE_THREADS=16 fmoe bench kernels --bits 2 3 4 8 --no-lm-head --json   # run $i"
    FMOE_THREADS=16 timeout 60 python3 -m fmoe bench kernels --bits 2 3 4 8 --no-lm-head --json \
        > "$OUT/kernels_t16_run$i.json" 2> /tmp/k_err.txt
    echo "[kernels run $i rc=$? at $SECONDS s]" | tee -a "$R"; tail -2 /tmp/k_err.txt >> "$R"
    decode_t16 $i
done
for t in 1 2 4 8 16; do
    [ "$(left)" -lt 25 ] && { echo "skipped threads=$t: deadline" | tee -a "$R"; break; }
    say "fmoe bench kernels --json --threads $t --bits 4 --no-lm-head --repeats 3"
    FMOE_THREADS=$t timeout 40 python3 -m fmoe bench kernels --json --threads $t --bits 4 --no-lm-head --repeats 3 \
        > "$OUT/kernels_t$t.json" 2> /tmp/k_err.txt
    echo "[threads=$t rc=$? at $SECONDS s]" | tee -a "$R"; tail -2 /tmp/k_err.txt >> "$R"
done
echo "done at $SECONDS s" | tee -a "$R"
