"""``fmoe generate [--model PATH] --prompt TEXT [--chat] [--json] [model options]``: stream text from a prompt.

    fmoe generate --model ~/models/Qwen3.5-35B-A3B-4bit --chat --prompt "What is a MoE?"
    fmoe generate --model ~/models/q397-stream --memory-budget 16GB --io-mode direct --prompt "Hi" --json

Prints the text as it is generated, then prefill/decode tok/s, peak RSS, bytes streamed, cache hit rate and I/O
wait; ``--json`` prints one object with the text, token ids and the same figures instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from fmoe.cli.options import add_model_options, model_options
from fmoe.errors import FmoeError

# what the graphs of fmoe/engine/cuda_graph.py replay, in generate's summary line
_GRAPH_WORDS = {"DecodeGraph": "one CUDA graph a step",
                "SegmentedGraph": "one CUDA graph per stretch between two layers' experts"}


def build_parser() -> argparse.ArgumentParser:
    g = argparse.ArgumentParser(prog="fmoe generate", description="Generate text from a prompt.")
    add_model_options(g)
    g.add_argument("--prompt", required=True, help="raw prompt text (with --chat: the user's message)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn with the chat template")
    g.add_argument("--thinking", action="store_true", help="with --chat: enable the thinking block")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-turn tokens")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    return g


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_tokens < 0:
        raise FmoeError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    from rich.console import Console

    from fmoe.engine.generate import Generation, Sampling
    from fmoe.engine.loader import load
    from fmoe.engine.tokenizer import StreamingDetokenizer

    console = Console(stderr=True)
    t0 = time.perf_counter()
    options = model_options(args)
    model, tok = load(args.model, options)
    load_s = time.perf_counter() - t0
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                       enable_thinking=args.thinking)
    ids = tok.encode(text)
    if not ids:
        raise FmoeError("the prompt is empty after tokenization")
    gen = Generation(model, ids, max_tokens=args.max_tokens,
                     sampling=Sampling(args.temperature, args.top_p, args.top_k, args.seed, args.min_p),
                     stop_ids=[] if args.ignore_eos else tok.eos_token_ids, vocab_limit=tok.vocab_size)
    detok = StreamingDetokenizer(tok, skip_ids=gen.stop_ids)
    out_ids: list[int] = []
    for step in gen:
        out_ids.append(step.token_id)
        delta = detok.add(step.token_id)
        if delta and not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
    st = gen.stats
    eng = st.engine
    result = {
        "text": tok.decode([t for t in out_ids if t not in gen.stop_ids]),
        "token_ids": out_ids,
        "prompt_tokens": st.prompt_tokens,
        "generated_tokens": st.generated_tokens,
        "finish_reason": st.finish_reason,
        "prefill_tok_s": st.prefill_tok_s,
        "decode_tok_s": st.decode_tok_s,
        "load_s": load_s,
        "peak_rss_bytes": st.peak_rss_bytes,
        "backend": options.backend,
        "experts_per_token": model.experts_per_token,
        "bytes_read": eng.bytes_read,
        "cache_hit_rate": eng.cache_hit_rate,
        "io_wait_s": eng.io_wait_s,
        "prediction_hit_rate": eng.prediction_hit_rate,
        "compute_s": model.compute_s,
        "kernel_isa": getattr(getattr(model, "ops", None), "kernel_isa", None),
        # the VRAM expert tier (CUDA, streamed models): hit rate and bytes resident, None elsewhere
        "vram_hit_rate": eng.store.get("device_cache_hit_rate"),
        "vram_resident_bytes": eng.store.get("device_resident_bytes"),
        "cuda_graph": bool(getattr(model, "_graph", None)),      # decode steps replayed captured CUDA graphs
        "cuda_graph_kind": type(model._graph).__name__ if getattr(model, "_graph", None) else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        sys.stdout.write("\n")
        line = (f"prompt {st.prompt_tokens} tok @ {st.prefill_tok_s:.1f} tok/s · {st.generated_tokens} tok @ "
                f"{st.decode_tok_s:.2f} tok/s · peak RSS {st.peak_rss_bytes / 2**20:.0f} MiB · {st.finish_reason}")
        if eng.bytes_read:
            hit = eng.cache_hit_rate
            line += (f" · read {eng.bytes_read / 2**20:.0f} MiB, cache hit {hit:.0%}" if hit is not None else "")
            line += f" · I/O wait {eng.io_wait_s:.2f}s"
        if result["vram_hit_rate"] is not None:
            graphs = _GRAPH_WORDS.get(result["cuda_graph_kind"], "CUDA graphs") if result["cuda_graph"] else None
            line += (f" · VRAM tier hit {result['vram_hit_rate']:.0%} "
                     f"({result['vram_resident_bytes'] / 2**30:.1f} GiB resident"
                     + (f", decode replays {graphs})" if graphs else ")"))
        console.print(f"[dim]{line}[/dim]")
    return 0
