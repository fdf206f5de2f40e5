#!/usr/bin/env bash
# Session 12 A/B (T threads, default 1): old = the committed qmv.cpp (a copy of fmoe/ at /tmp/wt_old run through ../oldpy.py),
# new = this session's qmv.cpp (2 bits: quads on long rows; 3 bits unchanged, a control).  Alternated rounds:
# run.sh ROUND...; raw JSON {old,new}{R}_t{T}.json, loads runs.txt
cd "$(dirname "$0")/../../../.."
D=bench/results/kernels_2core_session12/ab2
T=${T:-1}
for i in "$@"; do
  for v in old new; do
    echo "$v$i t$T $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
    case $v in
      old) .venv/bin/python bench/results/kernels_2core_session12/oldpy.py bench kernels --bits 2 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err ;;
      new) .venv/bin/fmoe bench kernels --bits 2 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err ;;
      new3off) FMOE_QMV_CFLAGS=-DFMOE_QUAD3_MAXK=1024 .venv/bin/fmoe bench kernels --bits 2 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err ;;
    esac
  done
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
