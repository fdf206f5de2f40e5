#!/usr/bin/env bash
# Session 12 A/B, one thread: old = the committed qmv.cpp (a copy of fmoe/ at /tmp/wt_old run through ../oldpy.py),
# new = this session's qmv.cpp (quads on long rows, 2 and 3 bits), new3off = the same with 3 bits' long rows single
# (FMOE_QUAD3_MAXK=1024).  Alternated rounds: run.sh ROUND... ; raw JSON {old,new,new3off}{R}_t{T}.json, loads runs.txt
cd "$(dirname "$0")/../../../.."
D=bench/results/kernels_2core_session12/ab1
T=${T:-1}
for i in "$@"; do
  for v in old new new3off; do
    echo "$v$i t$T $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
    case $v in
      old) .venv/bin/python bench/results/kernels_2core_session12/oldpy.py bench kernels --bits 2 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err ;;
      new) .venv/bin/fmoe bench kernels --bits 2 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err ;;
      new3off) FMOE_QMV_CFLAGS=-DFMOE_QUAD3_MAXK=1024 .venv/bin/fmoe bench kernels --bits 2 3 --no-lm-head --threads $T --json > $D/${v}${i}_t$T.json 2> $D/${v}${i}_t$T.err ;;
    esac
  done
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> $D/runs.txt
