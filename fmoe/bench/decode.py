"""`fmoe bench decode`: decode tok/s of a larger random model (4-bit mlx-lm checkpoint) on fmoe vs mlx-lm, same run.

The model (hidden 1024, 8 layers, 64 experts, top-4 by default) is built with transformers from a config, written in
Qwen's released layout and converted by mlx-lm's own converter, then cached; both engines load that same directory.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fmoe.paths import cache_dir

SHAPE = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
             linear_num_key_heads=8, linear_num_value_heads=16, linear_key_head_dim=64, linear_value_head_dim=64,
             num_experts=64, num_experts_per_tok=4, moe_intermediate_size=512, shared_expert_intermediate_size=512,
             vocab_size=32000)


def build(root: Path, bits: int) -> Path:
    import torch
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    from fmoe.bench.random_models import mlx_convert, randomise_norms, to_release_layout

    out = root / f"mlx-{bits}bit"
    if (out / "config.json").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**SHAPE)).eval()
    randomise_norms(model, 0)
    hf = root / "hf"
    model.save_pretrained(hf)
    del model
    _tokenizer(hf)
    to_release_layout(hf, root / "release")
    mlx_convert(root / "release", out, bits)
    return out


def _tokenizer(dst: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(SHAPE["vocab_size"] - 8)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def _fmoe_decode(path: Path, prompt: list[int], n: int, dtype: str) -> tuple[float, list[int]]:
    from fmoe.engine.generate import Generation
    from fmoe.engine.model import Model

    m = Model.load(path, backend="torch", dtype=dtype)
    list(Generation(m, prompt, max_tokens=4))             # warm-up (experts prepared, kernels built)
    g = Generation(m, prompt, max_tokens=n)
    toks = [s.token_id for s in g]
    return g.stats.decode_tok_s, toks


def _mlx_decode(path: Path, prompt: list[int], n: int) -> tuple[float, list[int]]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = load(str(path))

    def run(k):
        cache = make_prompt_cache(model)
        logits = model(mx.array([prompt]), cache=cache)[0, -1]
        toks, t0 = [], time.perf_counter()
        for _ in range(k):
            t = int(mx.argmax(logits).item())
            toks.append(t)
            logits = model(mx.array([[t]]), cache=cache)[0, -1]
            mx.eval(logits)
        return (k / (time.perf_counter() - t0)), toks

    run(2)
    return run(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fmoe bench decode", description=__doc__)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype (float32 is faster on CPUs without native bf16)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None, help="write JSON + markdown results to this directory")
    args = ap.parse_args(argv)
    path = build(cache_dir() / "bench-decode", args.bits)
    prompt = np.random.RandomState(0).randint(0, 30000, size=16).tolist()
    ours, ours_toks = _fmoe_decode(path, prompt, args.tokens, args.dtype)
    theirs, mlx_toks = _mlx_decode(path, prompt, args.tokens)
    same = sum(a == b for a, b in zip(ours_toks, mlx_toks))
    res = {"model": {**SHAPE, "bits": args.bits}, "tokens": args.tokens, "fmoe_dtype": args.dtype,
           "fmoe_decode_tok_s": ours, "mlx_lm_decode_tok_s": theirs, "speedup_vs_mlx_lm": ours / theirs,
           "greedy_tokens_agreeing": same}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "decode.json").write_text(json.dumps(res, indent=2))
        (out / "decode.md").write_text(
            "| engine | decode tok/s |\n|---|---|\n"
            f"| fmoe (torch, {args.dtype}) | {ours:.1f} |\n| mlx-lm (CPU) | {theirs:.1f} |\n\n"
            f"Model: hidden 1024, 8 layers, 64 experts top-4, {args.bits}-bit (mlx-lm converter). "
            f"Speedup {ours / theirs:.1f}x; {same}/{args.tokens} greedy tokens agree.\n")
    if args.json:
        print(json.dumps(res))
    else:
        print(f"fmoe {ours:.1f} tok/s · mlx-lm {theirs:.1f} tok/s · {ours / theirs:.1f}x · "
              f"{same}/{args.tokens} greedy tokens agree")
    return 0
