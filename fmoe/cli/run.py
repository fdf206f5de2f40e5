"""``fmoe run TASK.yaml [TASK.yaml ...] [--json] [--quiet] [--model PATH] [--backend torch|mlx] ...``

Runs each task file's prompts (``task:`` or ``tasks:``), each a fresh conversation, with a rich terminal UI on
stderr/stdout. ``--json``: one JSON object per prompt on stdout ({task, answer, steps, tool_calls [{name, arguments,
result, is_error}], stats, stop_reason, and ``passed`` + ``expect`` for tasks with ``expect``}); with several
prompts a last line aggregates them ({tasks: [...], answer, steps, tool_calls, stats, passed}). The exit status
is 1 when an expectation failed, 2 on errors.
"""
from __future__ import annotations

import argparse
import json
import time

from fmoe.cli.options import add_model_options, model_options


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fmoe run", description="Run agent task files.")
    ap.add_argument("tasks", nargs="+", help="task file(s) (YAML)")
    ap.add_argument("--json", action="store_true", help="print JSON results on stdout (UI on stderr)")
    ap.add_argument("--quiet", action="store_true", help="no UI: print only the answers (or the JSON)")
    add_model_options(ap, model_help="default: the task's model:, else the embedded demo model")
    ap.add_argument("--max-steps", type=int, default=None, help="overrides the task's max_steps:")
    ap.add_argument("--transcript", default=None, help="JSONL transcript path (overrides the task's transcript:)")
    ap.add_argument("--grammar-backend", default="llguidance", choices=["llguidance", "outlines"])
    return ap


def _merge_results(results: list) -> dict:
    from fmoe.agent.steps import RunStats

    stats = RunStats.total([r.stats for r in results]).to_dict()
    verdicts = [r.passed for r in results if r.passed is not None]
    out = {"tasks": [r.to_dict() for r in results], "answer": results[-1].answer if results else None,
           "steps": sum(len(r.model_steps) for r in results),
           "tool_calls": [c for r in results for c in r.tool_calls], "stats": stats}
    if verdicts:
        out["passed"] = all(verdicts)
    return out


def main(argv) -> int:
    from rich.console import Console

    from fmoe.agent.loop import run_task
    from fmoe.agent.remote import RemoteModel, is_remote_spec
    from fmoe.engine.loader import load, resolve_model
    from fmoe.agent.taskfile import load_task
    from fmoe.agent.transcript import Transcript
    from fmoe.agent.ui import AgentUI

    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    tasks: list = []
    try:
        for p in args.tasks:
            tasks.append(load_task(p))
        models: dict = {}
        all_results = []
        for tf in tasks:
            options = model_options(args, tf)
            spec = args.model if args.model is not None else tf.model
            if is_remote_spec(spec):   # an OpenAI-compatible endpoint: no local model to load
                key = ("remote", spec, tf.api_key_env)
                if key not in models:
                    models[key] = (RemoteModel.from_spec(spec, api_key_env=tf.api_key_env), None)
                mpath = models[key][0].spec
            else:
                mpath = resolve_model(args.model if args.model is not None else tf.model_ref)
                key = (str(mpath), repr(options))
            if key not in models:
                t0 = time.perf_counter()
                models[key] = load(mpath, options)
                if not args.quiet:
                    err.print(f"[dim]loaded {mpath} ({options.backend}) in {time.perf_counter() - t0:.1f}s[/dim]")
            model, tok = models[key]
            ui = None
            if not args.quiet:
                ui = AgentUI(Console(stderr=args.json))
            tr_path = args.transcript or tf.transcript_path
            overrides = {"grammar_backend": args.grammar_backend}
            if args.max_steps:
                overrides["max_steps"] = args.max_steps
            with Transcript(tr_path, append=len(tasks) > 1 and tf is not tasks[0]) as tr:
                if ui is not None:
                    (ui.console).print(f"[bold]{tf.path.name if tf.path else 'task'}[/bold] · model {mpath}")
                def report(r, tf=tf, ui=ui, mpath=mpath):
                    if ui is not None:
                        ui.summary(r)
                    if args.json:
                        d = r.to_dict()
                        d["task_file"] = str(tf.path) if tf.path else None
                        d["model"] = str(mpath)
                        print(json.dumps(d, ensure_ascii=False, default=str), flush=True)
                    elif args.quiet:
                        print(r.answer if r.answer is not None else f"(no answer: {r.stop_reason})", flush=True)
                results = run_task(tf, model, tok, on_event=ui, transcript=tr, on_result=report, **overrides)
            all_results.extend(results)
        if args.json and len(all_results) > 1:
            print(json.dumps(_merge_results(all_results), ensure_ascii=False, default=str), flush=True)
    finally:   # an FmoeError goes on to the dispatcher (fmoe.cli): "fmoe run: error: ...", exit 2
        for tf in tasks:   # MCP servers
            tf.close()
    return 1 if any(r.passed is False for r in all_results) else 0
