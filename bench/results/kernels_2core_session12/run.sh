#!/usr/bin/env bash
# Session 12, 2-core machine: the final kernels of this session (2-bit long-row quads, 3-bit one-load blocks),
# full-width runs with the load before each:  run.sh 1 2 3   (raw run{N}.json, loads runs.txt)
cd "$(dirname "$0")/../../.."
D=bench/results/kernels_2core_session12
for i in "${@:-1}"; do
    echo "run $i $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $D/runs.txt
    .venv/bin/fmoe bench kernels --bits 2 3 4 8 --json > $D/run$i.json 2> $D/run$i.err
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $D/runs.txt
