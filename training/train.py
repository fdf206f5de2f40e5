"""Train the demo Qwen3.5-MoE model on the synthetic tool-calling corpus (GPU, or a CPU fine-tune: ``--cpu-dtype``).

    python -m training.train --data runs/demo_data/train.jsonl.gz --schemas runs/demo_data/schemas.json \
        --tokenizer fmoe/demo/model --heldout training/heldout.jsonl --out OUT --minutes 8

Loss only on assistant tokens (``datagen.assistant_spans``), sequences right-padded in length buckets (no packing:
the linear-attention state must not run across conversations), bf16 autocast over fp32 master weights, AdamW,
warmup then a cosine schedule over the wall-clock budget, router load-balancing loss on. Writes OUT/model
(``save_pretrained``, bf16 safetensors + tokenizer files + generation config), OUT/loss_curve.json and
OUT/summary.json; prints the log. Needs torch, transformers (Qwen3.5-MoE), tokenizers and jinja2 only (not the
fmoe tools: the corpus already holds the tool results, and the schemas come from --schemas).

CPU mode (no GPU): ``--threads`` intra-op threads, ``--cpu-dtype fp32`` (plain) or ``bf16`` (autocast), and
``--ckpt-minutes M`` saves OUT/model (bf16, overwritten) every M minutes so that a partial run is usable:

    python -m training.train --data D/train.jsonl.gz --schemas D/schemas.json --init fmoe/demo/model \
        --heldout training/heldout.jsonl --heldout-limit 40 --out runs/demo_cpu/run --minutes 30 \
        --lr 3e-4 --warmup 20 --token-budget 8192 --cpu-dtype fp32 --threads 2 --ckpt-minutes 5
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from training import datagen

MODEL_CONFIG = dict(
    hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
    linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=2, linear_num_value_heads=4,
    linear_conv_kernel_dim=4, num_experts=32, num_experts_per_tok=4, moe_intermediate_size=64,
    shared_expert_intermediate_size=128, max_position_embeddings=4096, rms_norm_eps=1e-6,
    tie_word_embeddings=True, router_aux_loss_coef=0.01, initializer_range=0.02,
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------------------------
def _render_chunk(args):
    recs, schemas, template = args
    return [datagen.render(r, schemas, template) for r in recs]


def encode_records(recs: list[dict], schemas: dict, template: str, tok, max_len: int,
                   workers: int = 1) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record; labels are -100 outside the assistant spans."""
    if workers > 1 and len(recs) > 2000:
        import multiprocessing as mp  # noqa: PLC0415

        step = (len(recs) + workers * 4 - 1) // (workers * 4)
        with mp.get_context("fork").Pool(workers) as pool:
            texts = [t for part in pool.map(_render_chunk, [(recs[i:i + step], schemas, template)
                                                            for i in range(0, len(recs), step)]) for t in part]
    else:
        texts = _render_chunk((recs, schemas, template))
    encs = tok.encode_batch(texts, add_special_tokens=False)
    out = []
    for text, enc in zip(texts, encs):
        spans = datagen.assistant_spans(text)
        ids = enc.ids
        labels = [-100] * len(ids)
        j = 0
        for k, (s, _e) in enumerate(enc.offsets):
            while j < len(spans) and spans[j][1] <= s:
                j += 1
            if j < len(spans) and spans[j][0] <= s < spans[j][1]:
                labels[k] = ids[k]
        if len(ids) > max_len:
            ids, labels = ids[:max_len], labels[:max_len]
        out.append((ids, labels))
    return out


def make_batches(data, token_budget: int, rng: random.Random, pad_id: int):
    """Length-bucketed batches of about token_budget padded tokens, in random order."""
    order = sorted(range(len(data)), key=lambda i: (len(data[i][0]), rng.random()))
    batches, cur, cur_max = [], [], 0
    for i in order:
        L = len(data[i][0])
        if cur and max(cur_max, L) * (len(cur) + 1) > token_budget:
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, L)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(data, idx, pad_id: int):
    L = max(len(data[i][0]) for i in idx)
    ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), L), -100, dtype=torch.long)
    for r, i in enumerate(idx):
        a, b = data[i]
        ids[r, :len(a)] = torch.tensor(a)
        labels[r, :len(b)] = torch.tensor(b)
    return ids, labels


def shifted_loss(logits, labels):
    """Mean next-token cross-entropy over labelled positions, and (correct, count) for token accuracy."""
    lg = logits[:, :-1].float()
    lb = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        m = lb != -100
        correct = ((lg.argmax(-1) == lb) & m).sum()
    return loss, correct, m.sum()


# ---------------------------------------------------------------------------------------------------------------
def build_model(vocab_size: int, tok, device, init: str | None = None):
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig  # noqa: PLC0415

    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    if init:  # continue from an earlier checkpoint (fp32 master weights)
        model = Qwen3_5MoeForCausalLM.from_pretrained(init, dtype=torch.float32).to(device)
        model.config.router_aux_loss_coef = MODEL_CONFIG["router_aux_loss_coef"]
        return model, model.config, eos
    cfg = Qwen3_5MoeTextConfig(vocab_size=vocab_size, eos_token_id=eos[0], pad_token_id=eos[1],
                               bos_token_id=None, **MODEL_CONFIG)
    cfg.architectures = ["Qwen3_5MoeForCausalLM"]
    model = Qwen3_5MoeForCausalLM(cfg).to(device)
    return model, cfg, eos


def save_checkpoint(model, out: Path, tokenizer_dir: str, eos: list[int], curve, evals, step: int) -> Path:
    """OUT/model: a plain Hugging Face checkpoint in bf16 (a copy, so training continues in fp32)."""
    from transformers import GenerationConfig  # noqa: PLC0415

    mdir = out / "model"
    m = copy.deepcopy(model).to(torch.bfloat16)
    m.config.use_cache = True
    m.save_pretrained(mdir, safe_serialization=True)
    del m
    GenerationConfig(eos_token_id=eos, pad_token_id=eos[1], bos_token_id=None, do_sample=False,
                     max_new_tokens=512).save_pretrained(mdir)
    for f in TOKENIZER_FILES:
        shutil.copyfile(Path(tokenizer_dir) / f, mdir / f)
    (out / "loss_curve.json").write_text(json.dumps({"train": curve, "heldout": evals, "saved_step": step}) + "\n")
    log(f"saved {mdir} at step {step}")
    return mdir


@torch.no_grad()
def evaluate_loss(model, data, batches, pad_id, device, amp):
    model.eval()
    tot, n, corr = 0.0, 0, 0
    for idx in batches:
        ids, labels = collate(data, idx, pad_id)
        ids, labels = ids.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(input_ids=ids, use_cache=False)
        loss, c, m = shifted_loss(out.logits, labels)
        tot += loss.item() * m.item()
        n += m.item()
        corr += c.item()
    model.train()
    return tot / max(n, 1), corr / max(n, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description="train the demo Qwen3.5-MoE model")
    ap.add_argument("--data", required=True, help="train JSONL(.gz) from training.datagen")
    ap.add_argument("--schemas", required=True, help="tool schemas JSON written by datagen --schemas-out")
    ap.add_argument("--tokenizer", default=str(datagen.TEMPLATE_PATH.parent))
    ap.add_argument("--heldout", default=None)
    ap.add_argument("--init", default=None, help="start from this checkpoint instead of a random init")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the optimisation loop")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = time only)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training records")
    ap.add_argument("--token-budget", type=int, default=32768, help="padded tokens per batch")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=datagen.DEFAULT_SEED)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cpu-dtype", choices=("fp32", "bf16"), default="fp32",
                    help="CPU only: fp32, or bf16 autocast over fp32 weights")
    ap.add_argument("--threads", type=int, default=0, help="CPU only: torch intra-op threads (0 = torch default)")
    ap.add_argument("--ckpt-minutes", type=float, default=0.0,
                    help="save OUT/model every this many minutes of training (0 = only at the end)")
    ap.add_argument("--heldout-limit", type=int, default=0, help="held-out loss on the first N records only")
    ap.add_argument("--short-bias", type=int, default=0,
                    help="keep a record of L tokens with probability min(1, N/L) (0 = keep all): more, shorter "
                         "conversations per CPU second")
    ap.add_argument("--embed-lr-mult", type=float, default=1.0, help="LR multiplier of embed_tokens and lm_head")
    ap.add_argument("--schedule-minutes", type=float, default=0.0,
                    help="the cosine schedule spans this many minutes of training over several calls (0 = --minutes)")
    ap.add_argument("--resume", default=None,
                    help="an earlier --out folder: continue its run exactly (fp32 weights, optimizer, step, clock)")
    ap.add_argument("--sup-logits", action="store_true",
                    help="lm_head only at supervised positions (no router aux loss): cheaper on the CPU")
    a = ap.parse_args(argv)

    import transformers  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415

    t_start = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda" or a.cpu_dtype == "bf16"
    if device.type == "cpu" and a.threads:
        torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log(f"torch {torch.__version__} transformers {transformers.__version__} device {device} "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else f'threads {torch.get_num_threads()}'} "
        f"amp {amp}")

    tok = Tokenizer.from_file(str(Path(a.tokenizer) / "tokenizer.json"))
    template = (Path(a.tokenizer) / "chat_template.jinja").read_text(encoding="utf-8")
    schemas = json.loads(Path(a.schemas).read_text(encoding="utf-8"))
    pad_id = tok.token_to_id("<|endoftext|>")
    recs = datagen.read_jsonl(a.data)
    if a.limit:
        recs = recs[:a.limit]
    data = encode_records(recs, schemas, template, tok, a.max_len, a.workers)
    if a.short_bias:
        krng = random.Random(a.seed + 1)
        data = [d for d in data if krng.random() < min(1.0, a.short_bias / len(d[0]))]
    n_tok = sum(len(d[0]) for d in data)
    n_sup = sum(sum(1 for x in d[1] if x != -100) for d in data)
    log(f"train records {len(data)}  tokens {n_tok}  supervised {n_sup} ({n_sup / n_tok:.1%})  "
        f"max len {max(len(d[0]) for d in data)}  prep {time.time() - t_start:.1f}s")
    held, held_batches = None, []
    if a.heldout:
        hrecs = datagen.read_jsonl(a.heldout)
        if a.heldout_limit:
            hrecs = hrecs[:a.heldout_limit]
        held = encode_records(hrecs, schemas, template, tok, a.max_len, 1)
        held_batches = make_batches(held, a.token_budget, random.Random(0), pad_id)

    model, cfg, eos = build_model(tok.get_vocab_size(), tok, device, a.resume and str(Path(a.resume) / "model") or a.init)
    state = torch.load(Path(a.resume) / "state.pt", map_location=device) if a.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
    n_params = sum(p.numel() for p in model.parameters())
    log(f"params {n_params / 1e6:.2f}M  config {json.dumps(MODEL_CONFIG)}  vocab {cfg.vocab_size}")
    emb = [p for n, p in model.named_parameters() if "embed" in n or "lm_head" in n]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n and "lm_head" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 or "embed" in n or "lm_head" in n)]
    if a.embed_lr_mult == 1.0:  # as before: lm_head decays with the matrices
        decay, emb = decay + [p for n, p in model.named_parameters() if "lm_head" in n], \
            [p for n, p in model.named_parameters() if "embed" in n]
    groups = [{"params": decay, "weight_decay": a.wd, "mult": 1.0}, {"params": no_decay, "weight_decay": 0.0, "mult": 1.0},
              {"params": emb, "weight_decay": 0.0, "mult": a.embed_lr_mult}]
    opt = torch.optim.AdamW(groups,
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    budget_s = a.minutes * 60.0
    sched_s = (a.schedule_minutes or a.minutes) * 60.0
    rng = random.Random(a.seed)
    curve, evals = [], []
    step, epoch, seen_tok, seen_sup = 0, 0, 0, 0
    prior_s = 0.0  # training seconds of the earlier calls of a resumed run
    if state is not None:
        opt.load_state_dict(state["opt"])
        step, prior_s, seen_tok, seen_sup = state["step"], state["train_s"], state["tokens"], state["supervised"]
        rng = random.Random(f"{a.seed}/{step}")
        prev = json.loads((Path(a.resume) / "loss_curve.json").read_text())
        curve, evals = prev["train"], prev["heldout"]
        log(f"resumed {a.resume}: step {step}, {prior_s / 60:.2f} min trained")
        del state
    start_step, start_tok = step, seen_tok
    t0 = time.time()
    last_ckpt = t0
    done = False
    win_loss, win_n, win_c, win_m = 0.0, 0, 0, 0
    while not done:
        epoch += 1
        for idx in make_batches(data, a.token_budget, rng, pad_id):
            elapsed = time.time() - t0
            frac = min((prior_s + elapsed) / sched_s, 1.0)
            if step < a.warmup:
                lr = a.lr * (step + 1) / a.warmup
            else:
                lr = a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
            for gr in opt.param_groups:
                gr["lr"] = lr * gr["mult"]
            ids, labels = collate(data, idx, pad_id)
            ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                if a.sup_logits:
                    h = model.model(input_ids=ids, use_cache=False).last_hidden_state
                    lb = labels[:, 1:]
                    msk = lb != -100
                    lg = model.lm_head(h[:, :-1][msk]).float()
                    loss = torch.nn.functional.cross_entropy(lg, lb[msk])
                    with torch.no_grad():
                        c, m = (lg.argmax(-1) == lb[msk]).sum(), msk.sum()
                    aux = torch.zeros((), device=device)
                else:
                    o = model(input_ids=ids, use_cache=False, output_router_logits=True)
            if not a.sup_logits:
                loss, c, m = shifted_loss(o.logits, labels)
                aux = o.aux_loss if o.aux_loss is not None else torch.zeros((), device=device)
            total = loss + cfg.router_aux_loss_coef * aux
            opt.zero_grad(set_to_none=True)
            total.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            seen_tok += ids.numel()
            seen_sup += int((labels != -100).sum())
            win_loss += loss.item()
            win_n += 1
            win_c += int(c)
            win_m += int(m)
            if step % a.log_every == 0:
                el = time.time() - t0
                rec = {"step": step, "epoch": epoch, "time_s": round(prior_s + el, 1), "lr": lr,
                       "loss": win_loss / win_n, "tok_acc": win_c / max(win_m, 1), "aux": float(aux),
                       "grad_norm": float(gn), "tokens": seen_tok, "tok_per_s": round((seen_tok - start_tok) / el)}
                curve.append(rec)
                log(json.dumps(rec))
                win_loss, win_n, win_c, win_m = 0.0, 0, 0, 0
            if held is not None and step % a.eval_every == 0:
                hl, ha = evaluate_loss(model, held, held_batches, pad_id, device, amp)
                evals.append({"step": step, "heldout_loss": hl, "heldout_tok_acc": ha})
                log(json.dumps(evals[-1]))
            if time.time() - t0 >= budget_s or (a.max_steps and step >= a.max_steps):
                done = True
                break
            if a.ckpt_minutes and time.time() - last_ckpt >= a.ckpt_minutes * 60:
                save_checkpoint(model, out, a.tokenizer, eos, curve, evals, step)
                last_ckpt = time.time()
    train_s = time.time() - t0
    if held is not None:
        hl, ha = evaluate_loss(model, held, held_batches, pad_id, device, amp)
        evals.append({"step": step, "heldout_loss": hl, "heldout_tok_acc": ha})
        log(json.dumps(evals[-1]))

    mdir = save_checkpoint(model, out, a.tokenizer, eos, curve, evals, step)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "train_s": prior_s + train_s,
                "tokens": seen_tok, "supervised": seen_sup}, out / "state.pt")
    summary = {"data_version": datagen.DATA_VERSION, "seed": a.seed, "records": len(data), "tokens_per_epoch": n_tok,
               "supervised_per_epoch": n_sup, "steps": step, "epochs": epoch, "tokens_seen": seen_tok,
               "supervised_seen": seen_sup, "train_s": round(prior_s + train_s, 1),
               "tok_per_s": round((seen_tok - start_tok) / train_s), "steps_this_call": step - start_step,
               "params": n_params, "model_config": MODEL_CONFIG, "vocab_size": cfg.vocab_size,
               "final_train_loss": curve[-1]["loss"] if curve else None, "evals": evals,
               "args": vars(a), "torch": torch.__version__, "transformers": transformers.__version__,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
               "amp_bf16": amp,
               "checkpoint_bytes": (mdir / "model.safetensors").stat().st_size}
    (out / "loss_curve.json").write_text(json.dumps({"train": curve, "heldout": evals}) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(json.dumps({k: v for k, v in summary.items() if k not in ("evals", "args", "model_config")}))
    log(f"total wall {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
