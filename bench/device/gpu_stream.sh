#!/usr/bin/env bash
# `fmoe bench stream --device cuda` on the H200 machine (issue 13 items 5-6): the engine decoding on the GPU with
# experts in tiers (VRAM -> host RAM -> disk), tok/s against the tiered bound measured in the same run.
#   STEP t : the CPU+GPU tests of the bench (tests/bench/test_stream_cuda.py)                          (~1 min)
#   STEP c : 60 layers x 64 experts, 4-bit, every expert in VRAM, top-10, uniform (and the model's own router,
#            which lets the engine replay CUDA graphs); then the model is deleted
#   STEP a : 12 layers x 512 experts (~45 GB) warm in the page cache; VRAM budget scaled from 24 GB and 80 GB,
#            top-10 and top-4, uniform and zipf (a1: top-10 runs, with the synth; a2: top-4 runs)
#   STEP b : the same model cold from disk (page cache dropped before the timed tokens), top-10, 24 GB, uniform
#   STEP all: t c a b
# The disk (64 GB) holds one of the two models at a time: c deletes the 12-layer model first, a/b the 60-layer one.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="STEP=c bash bench/device/gpu_stream.sh")
# Each step writes its JSON (--out) and the human summary under $OUT; every command is echoed before it runs.
set -uo pipefail
. bench/device/setup.sh
STEP=${STEP:-${1:-all}}
C_LAYERS=${C_LAYERS:-60}; C_EXPERTS=${C_EXPERTS:-64}      # overridable for a dry run of the script elsewhere
A_LAYERS=${A_LAYERS:-12}; A_EXPERTS=${A_EXPERTS:-512}
M60=/tmp/s${C_LAYERS}x${C_EXPERTS}
M12=/tmp/s${A_LAYERS}x${A_EXPERTS}
TOKENS=${TOKENS:-16}
WARMUP=${WARMUP:-4}

say() { echo "+ $*" | tee -a "$OUT/commands.txt"; }
run() {  # run LIMIT_S NAME CMD...: echo, run under timeout, keep the output in $OUT/NAME.txt
    local limit=$1 name=$2; shift 2
    say "timeout $limit $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "[$name: rc=$rc, $((SECONDS - t0)) s]" | tee -a "$OUT/$name.txt" "$OUT/steps.txt"
    return $rc
}
env_info() {
    { date -u; nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv; free -g; df -h /tmp; nproc;
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
        > "$OUT/env_$1.txt" 2>&1
}
synth() {  # synth DIR LAYERS EXPERTS: unless DIR already holds a complete layout (manifest.json)
    local dir=$1 layers=$2 experts=$3
    if [ -f "$dir/manifest.json" ]; then echo "$dir exists: not rebuilt" | tee -a "$OUT/steps.txt"; return 0; fi
    local t0=$SECONDS
    run 480 "synth_$(basename "$dir")" python3 -m fmoe synth "$dir" --like qwen3.5-397b-a17b --layers "$layers" \
        --experts "$experts" --bits 4 --no-tokenizer --no-progress --force || return 1
    local secs=$((SECONDS - t0)) bytes; bytes=$(du -sb "$dir" | cut -f1)
    echo "synth $dir: $bytes bytes in $secs s ($((bytes / 1000000 / (secs > 0 ? secs : 1))) MB/s)" | tee -a "$OUT/steps.txt"
}
warm_page_cache() {  # read the model's files once through the page cache (they may have been evicted)
    say "cat $1/experts/*.bin $1/non_expert.safetensors > /dev/null"
    local t0=$SECONDS
    timeout 240 cat "$1"/experts/*.bin "$1/non_expert.safetensors" > /dev/null
    echo "[warm page cache $1: $((SECONDS - t0)) s]" | tee -a "$OUT/steps.txt"
}
bench() {  # bench NAME LIMIT_S ARGS...: one `fmoe bench stream --device cuda` run
    local name=$1 limit=$2; shift 2
    run "$limit" "$name" python3 -m fmoe bench stream --device cuda --tokens "$TOKENS" --warmup "$WARMUP" \
        --io-threads 8 --out "$OUT/$name.json" "$@"
}

step_t() {
    env_info t
    run 240 tests_stream_cuda python3 -m pytest -q -p no:cacheprovider tests/bench/test_stream_cuda.py
}

step_c() {
    env_info c
    rm -rf "$M12"
    synth "$M60" "$C_LAYERS" "$C_EXPERTS" || return 1
    # 60 x 64 experts = 27.2 GB of experts: a 40 GB budget holds them all (no scaling at 60 layers)
    bench c_L${C_LAYERS}E${C_EXPERTS}_top10_uniform_allvram 300 --model-dir "$M60" --mode page-cache --top-k 10 --routing uniform \
        --gpu-memory-budget 40GB
    # the model's own router: the engine may replay CUDA graphs (a routing override keeps it eager)
    bench c_L${C_LAYERS}E${C_EXPERTS}_top10_router_allvram 300 --model-dir "$M60" --mode page-cache --top-k 10 --routing router \
        --gpu-memory-budget 40GB
    say "rm -rf $M60"; rm -rf "$M60"
}

step_a_topk() {  # step_a_topk K: the 12 x 512 model, VRAM budget scaled from 24 and 80 GB, uniform and zipf
    local k=$1
    rm -rf "$M60"
    synth "$M12" "$A_LAYERS" "$A_EXPERTS" || return 1
    for B in 24GB 80GB; do
        for R in uniform zipf; do
            bench "a_L${A_LAYERS}E${A_EXPERTS}_top${k}_${R}_vram${B}" 150 --model-dir "$M12" --mode page-cache --top-k "$k" \
                --routing "$R" --gpu-memory-budget "$B"
        done
    done
}

step_a1() { env_info a; rm -rf "$M60"; synth "$M12" "$A_LAYERS" "$A_EXPERTS" && warm_page_cache "$M12" && step_a_topk 10; }
step_a2() { step_a_topk 4; }

step_b() {
    env_info b
    rm -rf "$M60"
    synth "$M12" "$A_LAYERS" "$A_EXPERTS" || return 1
    bench b_L${A_LAYERS}E${A_EXPERTS}_top10_uniform_vram24GB_cold 240 --model-dir "$M12" --mode page-cache --top-k 10 \
        --routing uniform --gpu-memory-budget 24GB --cold
}

case "$STEP" in
    t) step_t ;;
    c) step_c ;;
    a) step_a1; step_a2 ;;
    a1) step_a1 ;;
    a2) step_a2 ;;
    b) step_b ;;
    all) step_t; step_c; step_a1; step_a2; step_b ;;
    clean) rm -rf "$M60" "$M12" ;;
    *) echo "STEP must be t, c, a, a1, a2, b, all or clean (got $STEP)"; exit 2 ;;
esac
echo "--- steps"; cat "$OUT/steps.txt" 2>/dev/null
ls -la "$OUT"
