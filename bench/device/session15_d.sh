#!/usr/bin/env bash
# Session 15, call 4: the engine tests on the GPU after attention's GQA moved to SDPA's enable_gqa (the CUDA engine,
# its tiers and graphs, the stream bench), then on the 16-core host with the GPU hidden the decode with the store's
# residency window (RESIDENT_RECHECK_S): `fmoe bench decode` twice and the window's A/B alternated in one process.
# Everything in report.txt and at most 7 other files (the device returns at most 8).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session15_d.sh", timeout_s=480)
set -uo pipefail
DEADLINE=470
. bench/device/setup.sh
synth_s12
pytests 280 --tb=short tests/engine/test_cuda.py tests/bench/test_stream_cuda.py
cp /tmp/pytests.txt "$OUT/pytest_gpu_engine.txt"
export CUDA_VISIBLE_DEVICES="" FMOE_THREADS=16
synth_s12_wait
for i in 1 2; do decode_t16 $i; done
if [ "$(left)" -gt 60 ]; then
    say "python3 bench/device/decode_rest_ab.py /tmp/s12 resident_recheck 6"
    timeout $(( $(left) - 10 )) python3 bench/device/decode_rest_ab.py /tmp/s12 resident_recheck 6 >> "$R" 2>&1
    echo "[ab rc=$? at $SECONDS s]" | tee -a "$R"
fi
echo "done at $SECONDS s" | tee -a "$R"
