#!/usr/bin/env bash
cd /work/main
for i in 1 2 3 4; do
  for v in old new; do
    for t in 1 2; do
      echo "$v$i t$t $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> /tmp/ab5/runs.txt
      if [ $v = old ]; then
        .venv/bin/python /tmp/ab5/oldpy.py bench kernels --bits 3 --no-lm-head --threads $t --json > /tmp/ab5/${v}${i}_t$t.json 2>/tmp/ab5/${v}${i}_t$t.err
      else
        .venv/bin/python -m fmoe bench kernels --bits 3 --no-lm-head --threads $t --json > /tmp/ab5/${v}${i}_t$t.json 2>/tmp/ab5/${v}${i}_t$t.err
      fi
    done
  done
done
echo done >> /tmp/ab5/runs.txt
