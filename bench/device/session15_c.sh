#!/usr/bin/env bash
# Session 15, call 3: where the 16-core host's CPU time goes against the kernel's read-only peer (no GPU used): one
# 2 MB mat-vec a call, cold / hot / the peer of its words at 1-16 threads (bench/device/cpu_cold_vs_peer.py), the
# variant tests' count (call 2's report did not come back), and the decode's time outside the kernels by cProfile
# (bench/device/cpu_decode_profile.py). Everything lands in report.txt (the device returns at most 8 files).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session15_c.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
export CUDA_VISIBLE_DEVICES=""
{ lscpu | grep -E "Model name|^CPU\(s\)" | cut -c1-200; uptime; } >> "$R" 2>&1
synth_s12
python3 -c "from fmoe.kernels import native; native.build(isa='avx512'); native.build(isa='avx2'); \
    native.build(isa='generic')" >> "$R" 2>&1
pytests 90 --tb=short -rs tests/kernels/test_isa_variants.py -k "not one_object"
for shape in 1024x4096 4096x1024; do
    say "python3 bench/device/cpu_cold_vs_peer.py 4 $shape 1,4,8,16"
    timeout 60 python3 bench/device/cpu_cold_vs_peer.py 4 $shape 1,4,8,16 >> "$R" 2>&1
    echo "[cold_vs_peer $shape rc=$? at $SECONDS s]" | tee -a "$R"
done
synth_s12_wait
say "FMOE_THREADS=16 python3 bench/device/cpu_decode_profile.py /tmp/s12 --tokens 12 --warm 24 --top 35"
FMOE_THREADS=16 timeout 90 python3 bench/device/cpu_decode_profile.py /tmp/s12 --tokens 12 --warm 24 --top 35 \
    >> "$R" 2>&1
echo "[profile rc=$? at $SECONDS s]" | tee -a "$R"
echo "done at $SECONDS s" | tee -a "$R"
