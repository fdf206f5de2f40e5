"""``fmoe serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-queue 8] [model options]``

An OpenAI- and Anthropic-compatible HTTP server on one engine (fmoe.server): /v1/chat/completions, /v1/models,
/v1/messages, /v1/messages/count_tokens, /health. Binds to 127.0.0.1 unless --host says otherwise; with --api-key
(or $FMOE_API_KEY) every /v1 route needs ``Authorization: Bearer KEY`` or ``x-api-key: KEY``; without one, only
application/json bodies and loopback (or IP-address) Host headers are served.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fmoe.cli.options import add_model_options, model_options
from fmoe.errors import FmoeError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fmoe serve", description="OpenAI- and Anthropic-compatible HTTP server.")
    add_model_options(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=os.environ.get("FMOE_API_KEY"),
                    help="require this key (Authorization: Bearer KEY or x-api-key); default $FMOE_API_KEY")
    ap.add_argument("--max-queue", type=int, default=8, help="requests that may wait for the engine (then 429)")
    ap.add_argument("--model-name", default=None, help="the id /v1/models reports (default: the model's folder name)")
    ap.add_argument("--max-tokens", type=int, default=4096, help="default and cap of a response's tokens")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="temperature of requests that send none (default 0: greedy, reproducible)")
    ap.add_argument("--prefix-snapshots", type=int, default=8,
                    help="engine-state snapshots kept for prompt-prefix reuse across requests")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return ap


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "sse_starlette") if importlib.util.find_spec(m) is None]
    if missing:
        raise FmoeError(f"fmoe serve needs the 'serve' extra ({', '.join(missing)} missing): "
                        "pip install 'fmoe[serve]'")
    from fmoe.engine.loader import load, resolve_model
    from fmoe.server.run import serve

    if args.max_queue < 1:
        raise FmoeError("--max-queue must be at least 1")
    path = resolve_model(args.model)
    model, tok = load(path, model_options(args))
    name = args.model_name or ("fmoe-demo" if args.model is None else Path(args.model).expanduser().name)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"fmoe serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
    print(f"fmoe serve: {name} on http://{args.host}:{args.port}/v1 (OpenAI) and /v1/messages (Anthropic)",
          file=sys.stderr)
    serve(model, tok, host=args.host, port=args.port, api_key=args.api_key, log_level=args.log_level, name=name,
          max_queue=args.max_queue, max_tokens=args.max_tokens, temperature=args.temperature,
          prefix_snapshots=args.prefix_snapshots)
    return 0
