#!/usr/bin/env bash
# One call of a from-scratch demo-model run spread over several device calls (each at most 10 minutes), on a machine
# with two H200s: variant A on GPU 0 and variant B on GPU 1, each with its own tokenizer folder and its own training
# data (demo-data-v5: invented entities are pieces of that tokenizer). The cosine schedule spans SCHED minutes of
# training over all calls (train.py --schedule-minutes); calls after the first resume the exact fp32 state left in
# /tmp by the previous call (the machine stays warm between quick calls). While a call trains, the next call's data
# is generated in the background (NEXT_SEED). Returns the model of RET (A or B) in 15 MB parts and a tarball of both
# variants' logs, summaries and loss curves. Run 8 (docs/log/demo-model.md), the tokenizers made first (here, ~40 s each):
#   python -m training.train_tokenizer --out runs/tok_words --pretokenizer words
#   python -m training.train_tokenizer --out runs/tok_qwen --pretokenizer qwen     (the shipped one)
#   run(kind="nvidia-h200-x2", carry=["runs/whl", "runs/tok_words", "runs/tok_qwen"], command=
#     "CALL=1 MIN=6.8 SEED=81 NEXT_SEED=82 RET=A bash training/device_scratch.sh")
#     "CALL=2 MIN=8 SEED=82 NEXT_SEED=83 RET=B bash training/device_scratch.sh"
#     "CALL=3 MIN=6.2 SEED=83 RET=A bash training/device_scratch.sh"
#     "CALL=fetch RET=B bash training/device_scratch.sh"          (returns B's final model, trains nothing)
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUN=${RUN:-run8}; CALL=${CALL:-1}; MIN=${MIN:-7}; SCHED=${SCHED:-21}; N=${N:-50000}
SEED=${SEED:-81}; NEXT_SEED=${NEXT_SEED:-}; RET=${RET:-A}
TOK_A=${TOK_A:-runs/tok_words}; TOK_B=${TOK_B:-runs/tok_qwen}   # run 8: train_tokenizer --pretokenizer words / qwen
ARGS=${ARGS:---lr 2e-3 --embed-lr-mult 2 --warmup 100 --token-budget 65536 --min-lr-frac 0.05}

ret() {  # the chosen variant's model in parts, and the meta tarball
    local metas=()
    for v in A B; do for f in summary.json loss_curve.json train.log; do
        [ -e "/tmp/$RUN$v/$f" ] && metas+=("$RUN$v/$f"); done; done
    tar czf "$OUT/${RUN}_call${CALL}_meta.tar.gz" -C /tmp "${metas[@]}" || true
    split -b 15M "/tmp/$RUN$RET/model/model.safetensors" "$OUT/model$RET.safetensors.part-"
    sha256sum "/tmp/$RUN$RET/model/model.safetensors" | tee "$OUT/model$RET.sha256"
}
if [ "$CALL" = "fetch" ]; then ret; exit 0; fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site runs/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
ngpu=$(nvidia-smi -L | wc -l)
variants="A B"; [ "$ngpu" -ge 2 ] || variants="A"

gen() {  # gen VARIANT SEED WORKERS: that variant's training data for one call (skipped if already there)
    local v=$1 s=$2 w=$3 tok d
    tok=$([ "$v" = A ] && echo "$TOK_A" || echo "$TOK_B")
    d=/tmp/data_$RUN${v}_$s
    [ -e "$d/done" ] && return 0
    mkdir -p "$d"
    FMOE_DEMO_TOKENIZER=$tok python3 -m training.datagen --split train --n "$N" --seed "$s" --workers "$w" \
        --out "$d/train.jsonl.gz" --schemas-out "$d/schemas.json" > "$d/gen.log" 2>&1 && touch "$d/done"
}
t0=$(date +%s)
for v in $variants; do gen "$v" "$SEED" 15 & done; wait
echo "data ready after $(( $(date +%s) - t0 )) s"

pids=()
i=0
for v in $variants; do
    tok=$([ "$v" = A ] && echo "$TOK_A" || echo "$TOK_B")
    d=/tmp/data_$RUN${v}_$SEED
    resume=""; [ "$CALL" = 1 ] || resume="--resume /tmp/$RUN$v"
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$i python3 -m training.train --data "$d/train.jsonl.gz" --schemas "$d/schemas.json" \
        --tokenizer "$tok" --heldout training/heldout.jsonl --out "/tmp/$RUN$v" $resume --minutes "$MIN" \
        --schedule-minutes "$SCHED" --eval-every 250 --workers 8 --seed "$SEED" $ARGS >> "/tmp/$RUN$v.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done
if [ -n "$NEXT_SEED" ]; then for v in $variants; do gen "$v" "$NEXT_SEED" 6 & done; fi
for p in "${pids[@]}"; do wait "$p" || echo "a variant failed"; done
for v in $variants; do
    cp "/tmp/$RUN$v.log" "/tmp/$RUN$v/train.log"
    grep heldout_loss "/tmp/$RUN$v.log" | tail -2
    tail -2 "/tmp/$RUN$v.log"
done
wait   # the next call's data
echo "call done after $(( $(date +%s) - t0 )) s"
ret
