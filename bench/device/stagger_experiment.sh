#!/usr/bin/env bash
# For the next session (written in session 10, not run): the bulk-copy kernel's timelines at decode and with 64 rows,
# one matrix and gate+up, with and without BULK_STAGGER (a block's other stages issued once its first has landed),
# each also timed as the kernel table times it; then the bulk kernel tests with BULK_STAGGER set in-process.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/stagger_experiment.sh", timeout_s=300)
set -uo pipefail
DEADLINE=290
. bench/device/setup.sh
say "python3 bench/device/bulk_timeline.py --rows 10 64 --gate-up --stagger"
timeout 150 python3 bench/device/bulk_timeline.py --rows 10 64 --gate-up --stagger >> "$R" 2>&1
echo "[timeline rc=$? at $SECONDS s]" | tee -a "$R"
say "pytest (bulk tests) with BULK_STAGGER = True"
timeout 120 python3 -c "
import sys, pytest
from fmoe.kernels import cuda_qmv
cuda_qmv.BULK_STAGGER = True
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/kernels/test_cuda_qmv.py', '-k', 'bulk']))" \
    > /tmp/stagger_tests.txt 2>&1
echo "[stagger tests rc=$? at $SECONDS s]" | tee -a "$R"; tail -5 /tmp/stagger_tests.txt >> "$R"
