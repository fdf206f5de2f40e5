#!/usr/bin/env bash
# Session 10, 2-core machine: the committed kernels, full-width runs with the load before each.
#   run.sh 1 2 3   (00:19, the first set)      run.sh 4 5 6   (01:04, the second set)
cd "$(dirname "$0")/../../.."
D=bench/results/kernels_2core_session10
for i in "${@:-1}"; do
    echo "run $i $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $D/runs.txt
    .venv/bin/fmoe bench kernels --bits 2 3 4 8 --json > $D/run$i.json 2> $D/run$i.err
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $D/runs.txt
