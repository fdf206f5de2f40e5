#!/usr/bin/env bash
# Session 8: Nsight Compute on one decode-size call (if ncu is on the host and may read the counters).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session8_h.sh", timeout_s=200)
set -uo pipefail
. bench/device/setup.sh
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}" | tee -a "$R"
[ -z "$NCU" ] && exit 0
timeout 170 "$NCU" --kernel-name regex:"fmoe_qmv|fmoe_read" --launch-skip 2 --launch-count 3 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats \
    --section Occupancy python3 bench/device/ncu_decode.py > "$OUT/ncu.txt" 2>&1
echo "[ncu rc=$?]" | tee -a "$R"; tail -5 "$OUT/ncu.txt" | tee -a "$R"
