#!/usr/bin/env bash
# Session 12: 2/3-bit mat-vec chunks of ~128 KB as 4 bits' (a temporary FMOE_CHUNK23=1 macro) against 64-row chunks,
# both this session's qmv.cpp (/tmp/wt_new), two threads, alternated: run.sh ROUND...
cd "$(dirname "$0")/../../../.."
D=bench/results/kernels_2core_session12/chunk23
T=${T:-2}
for i in "$@"; do
  for v in new chunk; do
    echo "$v$i t$T $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
    if [ $v = chunk ]; then export FMOE_QMV_CFLAGS=-DFMOE_CHUNK23=1; else unset FMOE_QMV_CFLAGS; fi
    FMOE_CACHE_DIR=/tmp/fmoe_cache_new FMOE_PKG_ROOT=/tmp/wt_new .venv/bin/python bench/results/kernels_2core_session12/runpkg.py \
      bench kernels --bits 2 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err
  done
done
unset FMOE_QMV_CFLAGS
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
