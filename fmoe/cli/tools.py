"""``fmoe tools list [TASK.yaml] [--json] [--workspace DIR]``: the built-in tools and their JSON schemas (a rich
table); with a task file, that task's tools instead: its ``tools:`` and the tools of its ``mcp:`` servers (started,
listed and stopped)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


ALIASES = {"time"}   # same tool as current_time


def builtin_tools(workspace: Path) -> list[tuple[str, object]]:
    from fmoe.tools.registry import BUILTIN_NAMES, resolve_spec

    out = []
    for spec in BUILTIN_NAMES:
        if spec in ALIASES:
            continue
        for t in resolve_spec(spec, workspace, workspace=workspace):
            out.append((spec, t))
    return out


def source(t) -> str:
    """Where a task's tool comes from: mcp:SERVER, schema (declared only) or its Python module."""
    from fmoe.tools.mcp import MCPTool

    if isinstance(t, MCPTool):
        return f"mcp:{t.server.name}" + (f" ({t.remote_name})" if t.remote_name != t.name else "")
    if not getattr(t, "executable", True):
        return "schema"
    fn = getattr(t, "fn", None) or getattr(t, "func", None)
    return getattr(fn, "__module__", None) or type(t).__module__


def task_tools(path: str) -> tuple[list[tuple[str, object]], object]:
    from fmoe.agent.taskfile import load_task

    task = load_task(path)
    return [(source(t), t) for t in task.registry], task


def main(argv) -> int:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(prog="fmoe tools", description="List the built-in tools, or a task file's tools "
                                 "(with its MCP servers' tools).")
    ap.add_argument("action", nargs="?", default="list", choices=["list"])
    ap.add_argument("task", nargs="?", default=None, help="a task file: list its tools (tools: and mcp:)")
    ap.add_argument("--json", action="store_true", help="print the OpenAI-style schemas as JSON")
    ap.add_argument("--workspace", default=".", help="root shown for the file tools")
    args = ap.parse_args(argv)
    task = None
    try:
        if args.task is not None:
            tools, task = task_tools(args.task)
        else:
            tools = builtin_tools(Path(args.workspace).resolve())
    finally:   # an FmoeError goes on to the dispatcher (fmoe.cli): "fmoe tools: error: ...", exit 2
        if task is not None:
            task.close()   # MCP servers: listed, not kept
    if args.json:
        key = "source" if args.task is not None else "spec"
        print(json.dumps([{key: s, **t.openai_schema()} for s, t in tools], indent=2))
        return 0
    title = (f"tools of {args.task} (source → tool)" if args.task is not None
             else "built-in tools (task file spec → tool)")
    table = Table(title=title, show_lines=True)
    table.add_column("source" if args.task is not None else "spec", style="cyan", no_wrap=True)
    table.add_column("tool", style="bold")
    table.add_column("description")
    table.add_column("parameters (JSON Schema)")
    for spec, t in tools:
        params = t.parameters.get("properties", {}) if isinstance(t.parameters, dict) else {}
        req = set(t.parameters.get("required", [])) if isinstance(t.parameters, dict) else set()
        lines = []
        for name, sch in params.items():
            typ = sch.get("type") or ("enum" if "enum" in sch else "any")
            if "enum" in sch:
                typ = " | ".join(json.dumps(v) for v in sch["enum"])
            lines.append(f"{name}{'' if name in req else '?'}: {typ}")
        table.add_row(spec, t.name, (t.description or "").split("\n")[0], "\n".join(lines) or "(none)")
    Console().print(table)
    if args.task is not None:
        return 0
    Console().print("[dim]also: module:function, {file: my_tools.py}, {file: tools.json}, or "
                    "{name, description, parameters} in a task file's tools:[/dim]")
    return 0
