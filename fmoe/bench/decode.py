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


def load_warm(path: Path, warm: int = 24, memory_budget: int | None = None):
    """(model, prompt, load_s, warm_s): ``path`` loaded for torch CPU float32 decode (the streaming layout with an
    expert cache of ``memory_budget`` bytes where given, else in memory when it is not that layout) and ``warm``
    tokens decoded from a fixed 8-token prompt, so that its experts are in RAM (page cache / expert cache)."""
    from fmoe.engine.generate import Generation
    from fmoe.engine.model import Model

    stream = {"memory_budget": memory_budget} if memory_budget else None
    t0 = time.perf_counter()
    try:
        m = Model.load(path, backend="torch", dtype="float32", stream=stream)
    except Exception:  # noqa: BLE001 -- not the streaming layout: in-memory checkpoint
        m = Model.load(path, backend="torch", dtype="float32")
    load_s = time.perf_counter() - t0
    prompt = np.random.RandomState(0).randint(0, 1000, size=8).tolist()
    t0 = time.perf_counter()
    list(Generation(m, prompt, max_tokens=warm))
    return m, prompt, load_s, time.perf_counter() - t0


def profile_decode(path: Path, tokens: int = 16, warm: int = 24, memory_budget: int | None = None,
                   threads: int | None = None, mem_gbps: float | None = None) -> dict:
    """Decode time per token of ``path`` (torch CPU float32) split into native kernel time and the rest, against the
    memory bound (weight bytes the kernels read per token / measured memory read bandwidth).

    ``warm`` tokens are decoded first (same prompt) so that the experts are in RAM (page cache / expert cache).
    Bytes per token = the packed weights, scales and biases of every quantized matrix the kernels ran (dense
    float weights such as the router are not counted: the bound is slightly optimistic for us, i.e. conservative).
    """
    from fmoe.bench.kernels import measure_mem_read
    from fmoe.engine.generate import Generation
    from fmoe.kernels import native, torch_qlinear

    m, prompt, load_s, warm_s = load_warm(path, warm, memory_budget)
    per_tok, prof = [], []
    g = Generation(m, prompt, max_tokens=tokens + 1)
    last = None
    for i, _ in enumerate(g):  # token 0 comes after the prefill: time tokens 1..n
        now = time.perf_counter()
        if last is not None:
            per_tok.append(now - last)
            prof.append(torch_qlinear.profile(True))
        else:
            torch_qlinear.profile(True)
        last = time.perf_counter()
    torch_qlinear.profile(False)
    best = int(np.argmin(per_tok))
    med = float(np.median(per_tok))
    if mem_gbps is None:
        mem_gbps = measure_mem_read(nbytes=1 << 30, repeats=3, threads=threads or native.threads())["mem_read_gbps"]
    nbytes = prof[best]["bytes"]
    res = {"model": str(path), "threads": threads or native.threads(), "kernel_isa": native.kernel_isa(),
           "load_s": load_s, "warm_tokens": warm, "warm_s": warm_s, "tokens": len(per_tok),
           "ms_per_token_best": per_tok[best] * 1e3, "ms_per_token_median": med * 1e3,
           "kernel_ms_best_token": prof[best]["kernel_s"] * 1e3, "rest_ms_best_token": (per_tok[best] -
                                                                                       prof[best]["kernel_s"]) * 1e3,
           "kernel_ms_median": float(np.median([p["kernel_s"] for p in prof])) * 1e3,
           "kernel_calls_per_token": prof[best]["calls"], "weight_bytes_per_token": nbytes,
           "mem_read_gbps": mem_gbps, "memory_bound_ms": nbytes / (mem_gbps * 1e9) * 1e3}
    res["ratio_to_memory_bound_best"] = res["memory_bound_ms"] / res["ms_per_token_best"]
    res["ratio_to_memory_bound_median"] = res["memory_bound_ms"] / res["ms_per_token_median"]
    res["kernel_gbps_best_token"] = nbytes / max(prof[best]["kernel_s"], 1e-9) / 1e9
    return res


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--model" in argv or any(a.startswith("--model=") for a in argv):
        return main_model(argv)
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


def main_model(argv) -> int:
    ap = argparse.ArgumentParser(prog="fmoe bench decode --model PATH",
                                 description="per-token decode time in kernels vs the rest, against the memory bound")
    ap.add_argument("--model", required=True, help="checkpoint directory (e.g. from `fmoe synth`)")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--warm", type=int, default=24, help="tokens decoded first so that the experts are in RAM")
    ap.add_argument("--memory-budget-gb", type=float, default=None, help="expert cache budget (streaming layout)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None, help="write decode_profile.json there")
    a = ap.parse_args(argv)
    budget = int(a.memory_budget_gb * 1e9) if a.memory_budget_gb else None
    res = profile_decode(Path(a.model).expanduser(), a.tokens, a.warm, budget)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "decode_profile.json").write_text(json.dumps(res, indent=2) + "\n")
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['ms_per_token_best']:.1f} ms/token best ({res['ms_per_token_median']:.1f} median): kernels "
              f"{res['kernel_ms_best_token']:.1f} ms ({res['kernel_calls_per_token']} calls, "
              f"{res['weight_bytes_per_token'] / 1e6:.0f} MB, {res['kernel_gbps_best_token']:.1f} GB/s), rest "
              f"{res['rest_ms_best_token']:.1f} ms; memory bound {res['memory_bound_ms']:.1f} ms at "
              f"{res['mem_read_gbps']:.1f} GB/s -> ratio {res['ratio_to_memory_bound_best']:.2f} "
              f"({res['kernel_isa']}, {res['threads']} threads)")
    return 0
