# Sourced by the device scripts (bench/device/*.sh): unbuffered output, $OUT created, the carried wheels (pytest,
# rich, ...: runs/whl_gpu) installed into /tmp/site when present, PYTHONPATH and the kernel cache set.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls runs/whl_gpu/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site runs/whl_gpu/*.whl 2>/dev/null
fi
export PYTHONPATH=/tmp/site:$PWD FMOE_CACHE_DIR=${FMOE_CACHE_DIR:-/tmp/fmoe-cache}
# One report for a call's commands and results (the device returns only a few files), and the shared steps.
R=${R:-$OUT/report.txt}
DEADLINE=${DEADLINE:-560}
say() { echo "+ $*" | tee -a "$R"; }
left() { echo $((DEADLINE - SECONDS)); }
bench() {  # bench NAME LIMIT_S ARGS...: one `fmoe bench stream --device cuda` run (skipped near the deadline); its
           # JSON in $OUT, its summary in the report
    local name=$1 lim=$2; shift 2
    if [ "$(left)" -lt 40 ]; then echo "skipped $name: deadline" | tee -a "$R"; return; fi
    [ "$lim" -gt "$(left)" ] && lim=$(left)
    say "fmoe bench stream --device cuda --io-threads 8 --out $name.json $*"
    timeout "$lim" python3 -m fmoe bench stream --device cuda --io-threads 8 --out "$OUT/$name.json" "$@" \
        > "/tmp/$name.txt" 2>&1
    echo "[$name rc=$? at $SECONDS s]" | tee -a "$R"; tail -9 "/tmp/$name.txt" | tee -a "$R"
}
pytests() {  # pytests LIMIT_S ARGS...: pytest on ARGS (skipped near the deadline); in the report the counts, the failed
             # tests and the first failure in full
    local lim=$1; shift
    if [ "$(left)" -lt 20 ]; then echo "skipped pytest $*: deadline" | tee -a "$R"; return; fi
    [ "$lim" -gt "$(left)" ] && lim=$(left)
    say "pytest $*"
    timeout "$lim" python3 -m pytest -q -p no:cacheprovider "$@" > /tmp/pytests.txt 2>&1
    echo "[pytest rc=$? at $SECONDS s]" | tee -a "$R"
    grep -E "^(FAILED|ERROR)|passed|failed" /tmp/pytests.txt | head -40 >> "$R"
    grep -n -m1 -B2 -A30 "^_\{5,\} " /tmp/pytests.txt >> "$R"
}
synth_c60() {  # synth_c60: the (c) model (60 layers x 64 experts, 397B-shaped, 4-bit) into /tmp/c60 in the background;
               # synth_c60_wait before benching it
    ( python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 --no-tokenizer \
        --no-progress --force > /tmp/synth_c60.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_c60.txt ) &
    SYN=$!
}
synth_c60_wait() { wait "$SYN"; tail -2 /tmp/synth_c60.txt | tee -a "$R"; }
synth_s12() {  # synth_s12: the 12-layer x 64-expert 397B-shaped model (4-bit) into /tmp/s12 in the background, the
               # GPU hidden; synth_s12_wait before using it
    ( CUDA_VISIBLE_DEVICES="" timeout 150 python3 -m fmoe synth /tmp/s12 --like qwen3.5-397b-a17b --layers 12 \
        --experts 64 --bits 4 --force --no-progress --no-tokenizer > /tmp/synth_s12.txt 2>&1
      echo "synth rc=$?" >> /tmp/synth_s12.txt ) &
    SYN=$!
}
synth_s12_wait() { wait "$SYN"; tail -1 /tmp/synth_s12.txt | tee -a "$R"; }
decode_t16() {  # decode_t16 I: `fmoe bench decode` of /tmp/s12 on 16 threads into $OUT/decode_t16_runI.json
    [ "$(left)" -lt 20 ] && { echo "skipped decode $1: deadline" | tee -a "$R"; return; }
    say "FMOE_THREADS=16 fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json   # run $1"
    FMOE_THREADS=16 timeout 30 python3 -m fmoe bench decode --model /tmp/s12 --tokens 8 --warm 24 --json \
        > "$OUT/decode_t16_run$1.json" 2> /tmp/dec_err.txt
    echo "[decode run $1 rc=$? at $SECONDS s]" | tee -a "$R"; tail -2 /tmp/dec_err.txt >> "$R"
}
