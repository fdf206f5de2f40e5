#!/usr/bin/env bash
# Session 12: 3-bit quads on long rows (FMOE_QUAD3_MAXK=65536, with the pass-ahead prefetch) against the default
# (single rows past 1024 codes), both the final qmv.cpp (/tmp/wt_new), one thread, alternated: run.sh ROUND...
cd "$(dirname "$0")/../../../.."
D=bench/results/kernels_2core_session12/q3long
T=${T:-1}
for i in "$@"; do
  for v in new q3long; do
    echo "$v$i t$T $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
    if [ $v = q3long ]; then export FMOE_QMV_CFLAGS=-DFMOE_QUAD3_MAXK=65536; else unset FMOE_QMV_CFLAGS; fi
    FMOE_CACHE_DIR=/tmp/fmoe_cache_new FMOE_PKG_ROOT=/tmp/wt_new .venv/bin/python bench/results/kernels_2core_session12/runpkg.py \
      bench kernels --bits 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err
  done
done
unset FMOE_QMV_CFLAGS
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
