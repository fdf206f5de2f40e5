#!/usr/bin/env bash
# Session 12: 2-bit long-row quads prefetching two passes ahead (a temporary FMOE_QPF_PASSES=2 macro, removed) against
# one pass (the kept code), both via /tmp/wt_new, alternated: T=2 run.sh ROUND...
cd "$(dirname "$0")/../../../.."
D=bench/results/kernels_2core_session12/pf2pass
T=${T:-1}
for i in "$@"; do
  for v in new pf2; do
    echo "$v$i t$T $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
    if [ $v = pf2 ]; then export FMOE_QMV_CFLAGS=-DFMOE_QPF_PASSES=2; else unset FMOE_QMV_CFLAGS; fi
    FMOE_CACHE_DIR=/tmp/fmoe_cache_new FMOE_PKG_ROOT=/tmp/wt_new .venv/bin/python bench/results/kernels_2core_session12/runpkg.py \
      bench kernels --bits 2 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err
  done
done
unset FMOE_QMV_CFLAGS
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
