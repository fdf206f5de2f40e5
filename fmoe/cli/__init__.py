"""The ``fmoe`` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time

from fmoe.errors import FmoeError


def parse_size(text: str) -> int:
    from fmoe.units import parse_size as parse
    try:
        return parse(text)
    except ValueError as e:
        raise FmoeError(f"invalid size: {e}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory (HF, mlx-lm or fmoe streaming layout)")
    p.add_argument("--backend", default="torch", help="torch | mlx (default torch)")
    p.add_argument("--device", default=None, help="torch device: cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--experts-per-token", type=int, default=None, help="active experts per token (default: config)")
    p.add_argument("--memory-budget", default=None, help="expert cache budget for streamed models, e.g. 2GB")
    p.add_argument("--io-mode", default="page-cache", choices=["page-cache", "direct"], help="expert read mode")
    p.add_argument("--verify", action="store_true", help="verify expert checksums on every read")
    p.add_argument("--prediction", default="on", choices=["on", "off"], help="prefetch predicted experts")


def load_model(args):
    from fmoe.engine.model import Model
    from fmoe.storage.stream_layout import is_streaming_layout

    stream = None
    if is_streaming_layout(args.model):
        stream = {"mode": args.io_mode, "verify": args.verify,
                  "memory_budget": parse_size(args.memory_budget) if args.memory_budget else None}
    return Model.load(args.model, backend=args.backend, dtype=args.dtype, device=args.device,
                      experts_per_token=args.experts_per_token, stream=stream,
                      predict_experts=(args.prediction == "on") if stream else False)


def cmd_generate(args) -> int:
    from rich.console import Console

    from fmoe.engine.generate import Generation, Sampling
    from fmoe.engine.tokenizer import Tokenizer

    console = Console(stderr=True)
    t0 = time.perf_counter()
    model = load_model(args)
    tok = Tokenizer.from_dir(model.checkpoint.path if hasattr(model.checkpoint, "path") else args.model)
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
    out_ids: list[int] = []
    printed = ""
    for step in gen:
        out_ids.append(step.token_id)
        if not args.json:
            body = [t for t in out_ids if t not in gen.stop_ids]
            text_now = tok.decode(body)
            if not text_now.endswith("\ufffd"):
                sys.stdout.write(text_now[len(printed):])
                sys.stdout.flush()
                printed = text_now
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
        "backend": args.backend,
        "experts_per_token": model.experts_per_token,
        "bytes_read": eng.get("bytes_read", 0),
        "cache_hit_rate": eng.get("cache_hit_rate"),
        "io_wait_s": eng.get("io_wait_s", 0.0),
        "prediction_hit_rate": eng.get("prediction_hit_rate"),
        "compute_s": model.compute_s,
    }
    if args.json:
        print(json.dumps(result))
    else:
        sys.stdout.write("\n")
        line = (f"prompt {st.prompt_tokens} tok @ {st.prefill_tok_s:.1f} tok/s · {st.generated_tokens} tok @ "
                f"{st.decode_tok_s:.2f} tok/s · peak RSS {st.peak_rss_bytes / 2**20:.0f} MiB · {st.finish_reason}")
        if eng.get("bytes_read"):
            hit = eng.get("cache_hit_rate")
            line += (f" · read {eng['bytes_read'] / 2**20:.0f} MiB, cache hit {hit:.0%}" if hit is not None else "")
            line += f" · I/O wait {eng.get('io_wait_s', 0.0):.2f}s"
        console.print(f"[dim]{line}[/dim]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fmoe", description="Stream Mixture-of-Experts models from SSD; run agents.")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt")
    _add_model_args(g)
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
    g.set_defaults(func=cmd_generate)

    # listed for --help; main() hands their arguments to their own modules
    for name, help_ in (
        ("convert", "convert a HF or mlx-lm checkpoint to the streaming layout"),
        ("synth", "write a random-weight model at a real model's dimensions"),
        ("run", "run an agent task file"),
        ("chat", "interactive chat with tools"),
        ("tools", "list available tools"),
        ("eval", "structured-output reliability sweep"),
    ):
        sub.add_parser(name, help=help_)
    b = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES))
    b.add_argument("bench", choices=BENCHES)
    return ap


DELEGATED = {"convert": "fmoe.storage.convert", "synth": "fmoe.storage.synth", "run": "fmoe.cli.run",
             "chat": "fmoe.cli.chat", "tools": "fmoe.cli.tools", "eval": "fmoe.cli.eval"}
BENCHES = ("kernels", "stream", "grammar", "decode", "fastforward")


def main(argv=None) -> int:
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # subcommands implemented by their own modules get their arguments untouched
        if argv and argv[0] in DELEGATED:
            return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:]) or 0
        if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHES:
            return importlib.import_module(f"fmoe.bench.{argv[1]}").main(argv[2:]) or 0
        args = build_parser().parse_args(argv)
        return args.func(args)
    except FmoeError as e:
        print(f"fmoe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
