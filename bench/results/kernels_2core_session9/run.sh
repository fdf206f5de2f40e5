#!/usr/bin/env bash
# A/B: 2/3-bit decode rows up to 4096 codes two per pass (new) vs one (old), alternated
cd /work/main
for i in 1 2 3; do
  for v in new old; do
    if [ $v = new ]; then export FMOE_QMV_CFLAGS="-DFMOE_PAIR_LONG_MAXK=4096"; else unset FMOE_QMV_CFLAGS; fi
    uptime >> /tmp/ab9/log.txt
    .venv/bin/python -m fmoe bench kernels --bits 2 3 --no-lm-head --json > /tmp/ab9/$v$i.json 2>/tmp/ab9/$v$i.err
  done
done
echo done >> /tmp/ab9/log.txt
