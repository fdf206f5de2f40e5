#!/usr/bin/env bash
# One demo-model training call on the device machine (one H200), from the repository root, e.g. run 4:
#   run(command="RUN=run4 bash training/device_train.sh", carry=["runs/whl"])
# Regenerates the training data (demo-data-v3) from DATA_SEED, then trains two variants side by side on the one GPU
# (ARGS_A / ARGS_B, both from INIT), and returns the one with the lower held-out loss (all 200 records): its
# model.safetensors in 3 parts (the device returns files of 16 MiB at most) and a tarball of both logs, summaries and
# loss curves. Runs 4-6 of docs/log/demo-model.md, chained on one warm machine (its /tmp survives between calls):
#   RUN=run4
#   RUN=run5 INIT=/tmp/run4B/model DATA_SEED=4321 ARGS_A="--lr 6e-4 --embed-lr-mult 3" ARGS_B="--lr 3e-4 --embed-lr-mult 3"
#   RUN=run6 INIT=/tmp/run5A/model DATA_SEED=5678 MIN=6.3 ARGS_A="--lr 4e-4 --embed-lr-mult 3" \
#            ARGS_B="--lr 4e-4 --embed-lr-mult 3 --min-lr-frac 0.01 --token-budget 65536"
#   run 7 (demo-data-v4, from the shipped run 6, one variant, ~4 minutes of device time in all):
#   RUN=run7 DATA_SEED=777 N=16000 MIN=1.8 ARGS_A="--lr 3e-4 --embed-lr-mult 3 --token-budget 65536 --warmup 10" ARGS_B=none
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUN=${RUN:-run4}; INIT=${INIT:-fmoe/demo/model}; DATA_SEED=${DATA_SEED:-1234}; N=${N:-40000}; MIN=${MIN:-6.5}
ARGS_A=${ARGS_A:---lr 1e-3}; ARGS_B=${ARGS_B:---lr 1e-3 --embed-lr-mult 3}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site runs/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
D=/tmp/data_$RUN; mkdir -p "$D"
/usr/bin/time -f "datagen %e s" python3 -m training.datagen --split train --n "$N" --seed "$DATA_SEED" --workers 16 \
    --out "$D/train.jsonl.gz" --schemas-out "$D/schemas.json"
common="--data $D/train.jsonl.gz --schemas $D/schemas.json --tokenizer fmoe/demo/model --init $INIT
        --heldout training/heldout.jsonl --minutes $MIN --warmup 30 --eval-every 200 --workers 8"
# shellcheck disable=SC2086
python3 -m training.train $common $ARGS_A --out "/tmp/${RUN}A" > "/tmp/${RUN}A.log" 2>&1 &
pa=$!
if [ "$ARGS_B" = "none" ]; then   # one variant alone: the whole GPU (87k tokens/s instead of ~56k each)
    pb=""
else
    # shellcheck disable=SC2086
    python3 -m training.train $common $ARGS_B --out "/tmp/${RUN}B" > "/tmp/${RUN}B.log" 2>&1 &
    pb=$!
fi
wait $pa || echo "variant A failed"; [ -z "$pb" ] || wait $pb || echo "variant B failed"
best=$(python3 - "$RUN" <<'PY'
import json, pathlib, sys
run, best = sys.argv[1], None
for v in "AB":
    p = pathlib.Path(f"/tmp/{run}{v}/summary.json")
    if not p.exists():
        continue
    s = json.loads(p.read_text())
    e = s["evals"][-1]
    print(f"variant {v}: heldout_loss {e['heldout_loss']:.4f} acc {e['heldout_tok_acc']:.4f} steps {s['steps']} "
          f"tok/s {s['tok_per_s']}", file=sys.stderr)
    if best is None or e["heldout_loss"] < best[1]:
        best = (v, e["heldout_loss"])
print(best[0])
PY
)
echo "best variant: $best"
echo "$best" > "/tmp/best_$RUN.txt"
for v in A B; do cp "/tmp/$RUN$v.log" "/tmp/$RUN$v/" 2>/dev/null || true; done
metas=("best_$RUN.txt")
for v in A B; do for f in summary.json loss_curve.json "$RUN$v.log"; do
    [ -e "/tmp/$RUN$v/$f" ] && metas+=("$RUN$v/$f"); done; done
tar czf "$OUT/${RUN}_meta.tar.gz" -C /tmp "${metas[@]}" || true
split -b 15M "/tmp/$RUN$best/model/model.safetensors" "$OUT/model.safetensors.part-"
sha256sum "/tmp/$RUN$best/model/model.safetensors" | tee "$OUT/model.sha256"
