#!/usr/bin/env bash
# Session 11, 2-core machine: the committed kernels, full-width runs with the load before each.
#   run.sh 1 2 3 (the CPU kernels unchanged since session 10)
cd "$(dirname "$0")/../../.."
D=bench/results/kernels_2core_session11
for i in "${@:-1}"; do
    echo "run $i $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $D/runs.txt
    .venv/bin/fmoe bench kernels --bits 2 3 4 8 --json > $D/run$i.json 2> $D/run$i.err
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $D/runs.txt
