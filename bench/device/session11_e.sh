#!/usr/bin/env bash
# Session 11, call 5: Nsight Compute on the bulk-copy kernel's decode calls (one matrix 1024 x 4096, gate+up,
# 4096 x 1024): why a stage's products take 1.1-1.3 us at 4096 inputs (72 KB) but 0.3 us at 1024 (36 KB).
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session11_e.sh", timeout_s=240)
set -uo pipefail
. bench/device/setup.sh
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}" | tee -a "$R"
[ -z "$NCU" ] && exit 0
timeout 220 "$NCU" --kernel-name regex:"fmoe_qmv4_bulk" --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis_Tables --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
    python3 bench/device/ncu_bulk.py > "$OUT/ncu.txt" 2>&1
echo "[ncu rc=$?]" | tee -a "$R"; tail -5 "$OUT/ncu.txt" | tee -a "$R"
