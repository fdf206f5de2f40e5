#!/usr/bin/env bash
# Session 12 A/B through one runner: old = /tmp/wt_old (committed qmv.cpp), new = /tmp/wt_new (this session's), each
# with its own fresh kernel cache (../setup_copies.sh).  T threads (default 1), BITS (default "2 3"), alternated rounds:
#   T=1 run.sh 1 2 3 4 ; raw JSON {old,new}{R}_t{T}.json, loads runs.txt
cd "$(dirname "$0")/../../../.."
D=bench/results/kernels_2core_session12/ab3
T=${T:-1}
for i in "$@"; do
  for v in old new; do
    echo "$v$i t$T $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
    FMOE_CACHE_DIR=/tmp/fmoe_cache_$v FMOE_PKG_ROOT=/tmp/wt_$v .venv/bin/python bench/results/kernels_2core_session12/runpkg.py \
      bench kernels --bits ${BITS:-2 3} --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err
  done
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
