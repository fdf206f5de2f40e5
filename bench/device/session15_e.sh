#!/usr/bin/env bash
# Session 15, call 5: the 16-core host's fused experts (fmoe_moe_fused: gate/up rows, then h, then 64-row blocks of
# every expert's down matrix) and one-matrix mat-vec at other work chunk sizes: FMOE_GRAIN 64 (the default), 32, 16
# (FMOE_QMV_CFLAGS, compile-time), alternated over two rounds; `fmoe bench kernels --bits 4` and `fmoe bench decode`
# per variant and round, their key figures in report.txt (the device returns at most 8 files). GPU hidden.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session15_e.sh", timeout_s=420)
set -uo pipefail
DEADLINE=410
. bench/device/setup.sh
export CUDA_VISIBLE_DEVICES="" FMOE_THREADS=16
synth_s12
declare -A FL=([g64]="" [g32]="-DFMOE_GRAIN=32" [g16]="-DFMOE_GRAIN=16")
for v in g64 g32 g16; do
    FMOE_QMV_CFLAGS="${FL[$v]}" timeout 100 python3 -c "from fmoe.kernels import native; native.build(isa='avx512')" \
        >> /tmp/build.txt 2>&1 &
done
wait $(jobs -p | grep -v "^$SYN$"); echo "[builds at $SECONDS s]" | tee -a "$R"
synth_s12_wait
for r in 1 2; do
    for v in g64 g32 g16; do
        [ "$(left)" -lt 40 ] && { echo "skipped $v round $r: deadline" | tee -a "$R"; continue; }
        say "round $r $v: FMOE_QMV_CFLAGS='${FL[$v]}' fmoe bench kernels --bits 4 --no-lm-head --repeats 3; fmoe bench decode"
        FMOE_QMV_CFLAGS="${FL[$v]}" timeout 40 python3 -m fmoe bench kernels --bits 4 --no-lm-head --repeats 3 --json \
            > /tmp/k.json 2>/dev/null && python3 bench/device/summarize_runs.py kernels /tmp/k.json | tee -a "$R"
        FMOE_QMV_CFLAGS="${FL[$v]}" timeout 30 python3 -m fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 \
            --json > /tmp/d.json 2>/dev/null && python3 bench/device/summarize_runs.py decode /tmp/d.json | tee -a "$R"
    done
done
echo "done at $SECONDS s" | tee -a "$R"
