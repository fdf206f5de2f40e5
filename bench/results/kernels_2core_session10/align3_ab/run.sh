#!/usr/bin/env bash
cd /work/main
for i in 1 2 3; do
  for v in old new; do
    if [ $v = new ]; then export FMOE_QMV_CFLAGS="-DFMOE_3BIT_ALIGN=1"; else unset FMOE_QMV_CFLAGS; fi
    echo "$v$i $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> /tmp/ab3/runs.txt
    .venv/bin/fmoe bench kernels --bits 3 --no-lm-head --json > /tmp/ab3/$v$i.json 2>/tmp/ab3/$v$i.err
  done
done
echo done >> /tmp/ab3/runs.txt
