"""``fmoe chat [--model PATH] [--tools calculator,files,...] [--workspace DIR] [--system TEXT]``

Interactive chat with tools: reads user lines from stdin (a terminal or a pipe), runs agent steps for each, and
keeps the conversation (and the engine state) between lines. ``/exit`` (or end of input) quits, ``/reset`` starts
a new conversation. Tool specs are those of task files (built-ins, module:function, file.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmoe.cli.options import add_model_options, model_options


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fmoe chat", description="Interactive chat with tools.")
    add_model_options(ap)
    ap.add_argument("--tools", default="calculator,time", help="comma-separated tool specs ('' for none)")
    ap.add_argument("--workspace", default=".", help="root of the file tools (default: the current directory)")
    ap.add_argument("--system", default="You are a helpful assistant. Use the tools when they help.")
    ap.add_argument("--tool-choice", default="auto", choices=["auto", "required", "none"])
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--thinking", action="store_true")
    ap.add_argument("--tool-timeout", type=float, default=30.0)
    ap.add_argument("--transcript", default=None, help="JSONL transcript path")
    ap.add_argument("--quiet", action="store_true", help="print only the answers")
    return ap


def main(argv) -> int:
    from rich.console import Console

    from fmoe.agent.loop import Agent
    from fmoe.engine.loader import load, resolve_model
    from fmoe.agent.transcript import Transcript
    from fmoe.agent.ui import AgentUI
    from fmoe.engine.generate import Sampling
    from fmoe.tools.registry import ToolRegistry

    args = build_parser().parse_args(argv)
    console = Console()
    reg = ToolRegistry()
    ws = Path(args.workspace).resolve()
    for spec in [s.strip() for s in args.tools.split(",") if s.strip()]:
        reg.add_spec(spec, Path.cwd(), workspace=ws)
    path = resolve_model(args.model)
    model, tok = load(path, model_options(args))
    ui = None if args.quiet else AgentUI(console)
    with Transcript(args.transcript) as tr:
        agent = Agent(model, tok, reg, system=args.system or None, tool_choice=args.tool_choice,
                      max_steps=args.max_steps, max_tokens=args.max_tokens,
                      sampling=Sampling(temperature=args.temperature), thinking=args.thinking,
                      tool_timeout=args.tool_timeout, on_event=ui, transcript=tr)
        interactive = sys.stdin.isatty()
        if not args.quiet:
            console.print(f"[dim]model {path} · tools: {', '.join(reg.names()) or 'none'} · "
                          f"/exit to quit, /reset for a new conversation[/dim]")
        while True:
            if interactive:
                console.print("[bold]you>[/bold] ", end="")
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/exit", "/quit"):
                break
            if line == "/reset":
                agent.reset()
                continue
            r = agent.chat(line)
            if ui is not None:
                ui.summary(r)
            else:
                print(r.answer if r.answer is not None else f"(no answer: {r.stop_reason})", flush=True)
    return 0
