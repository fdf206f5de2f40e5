#!/usr/bin/env bash
cd /work/main
FMOE_QMV_CFLAGS="-DFMOE_2BIT_TREE=1" .venv/bin/python -c "from fmoe.kernels import native; native.build()"
.venv/bin/python -c "from fmoe.kernels import native; native.build()"
for i in 1 2 3 4; do
  for v in old new; do
    if [ $v = new ]; then export FMOE_QMV_CFLAGS="-DFMOE_2BIT_TREE=1"; else unset FMOE_QMV_CFLAGS; fi
    echo "$v$i $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> /tmp/ab7/runs.txt
    .venv/bin/fmoe bench kernels --bits 2 --no-lm-head --threads 1 --json > /tmp/ab7/${v}${i}.json 2>/tmp/ab7/${v}${i}.err
  done
done
echo done >> /tmp/ab7/runs.txt
