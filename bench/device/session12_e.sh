#!/usr/bin/env bash
# Session 12, fifth call: the one-launch experts' down units listed per block by the launcher's schedule (a model of
# when each block's pairs and each row's h are done), its cost settings; then its tests.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session12_e.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
for set in "" "EXPERTS_STAGE_COST=1.0" "EXPERTS_DOWN_COST=1.0"; do
    say "python3 bench/device/experts_time.py --rows 10 --set $set"
    timeout 60 python3 bench/device/experts_time.py --rows 10 --set $set >> "$R" 2>&1
    echo "[experts_time rc=$? at $SECONDS s]" | tee -a "$R"
done
pytests 100 tests/kernels/test_cuda_qmv.py -k "experts"
