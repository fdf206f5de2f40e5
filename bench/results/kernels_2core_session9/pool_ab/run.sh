#!/usr/bin/env bash
# A/B: the pool before session 8's claim-word fix (c8a268c) vs now (HEAD), alternated, 4-bit kernel bench
for i in 1 2 3; do
  for v in now old; do
    if [ $v = old ]; then d=/tmp/wt_c8; else d=/work/main; fi
    uptime >> /tmp/ab10/log.txt
    (cd $d && PYTHONPATH=$d /work/main/.venv/bin/python -m fmoe bench kernels --bits 4 --json > /tmp/ab10/$v$i.json 2>/dev/null)
  done
done
echo done >> /tmp/ab10/log.txt
