#!/usr/bin/env bash
# Session 6, issue 14 on the H200 machine's 16-core host (CPU only, about 3 minutes): warm in-RAM decode of a 12-layer
# 397B-shaped model at 16 threads, the final code alternated with the session's start (runs/before_session,
# `git archive 510c5d0 fmoe`), three pairs, after the CPU kernel tests on this host's AVX-512 VNNI; then the 4-bit
# mat-vec at 16 threads.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu", "runs/before_session"], command="bash bench/device/cpu_session6_final.sh")
set -uo pipefail
# The two trees run from /tmp: `python3 -m` puts the current directory ahead of PYTHONPATH (the first runs of these
# scripts, from the repository root, ran the current code under both labels).
. bench/device/setup.sh
export CUDA_VISIBLE_DEVICES=""
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-220; free -g | head -2; } >> "$R" 2>&1
say "pytest tests/kernels/test_delta_step.py"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_delta_step.py 2>&1 | tail -4 >> "$R"
say "fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force --no-progress --no-tokenizer"
timeout 80 python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4 --force \
    --no-progress --no-tokenizer 2>&1 | tail -1 >> "$R"
NEW=/tmp/site:$PWD; OLD=/tmp/site:$PWD/runs/before_session
for P in $NEW $OLD; do (cd /tmp && PYTHONPATH=$P python3 -c "from fmoe.kernels import native; print('variant', native.kernel_isa())" >> "$R" 2>&1); done
dec() {   # dec LABEL PYTHONPATH: one decode measurement, its JSON on one line of the report
    say "FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json   # $1, load $(cut -d' ' -f1 /proc/loadavg)"
    (cd /tmp && PYTHONPATH=$2 FMOE_THREADS=16 timeout 60 python3 -m fmoe bench decode --model /tmp/s12 --tokens 8 \
        --warm 24 --json 2>&1 | tail -1 >> "$R")
}
for i in 1 2 3; do dec "final" $NEW; dec "session start" $OLD; done
say "fmoe bench kernels --threads 16 --bits 4 --quick --json"
timeout 40 python3 -m fmoe bench kernels --threads 16 --bits 4 --quick --json 2>&1 \
    | python3 -c "import json,sys; t=sys.stdin.read(); print(json.dumps(json.loads(t[t.index('{'):])))" >> "$R" 2>&1
echo "done at $SECONDS s" | tee -a "$R"
cat "$R"
