"""``fmoe bench serve``: latency of ``fmoe serve`` through the official openai SDK, with prefix reuse.

    fmoe bench serve [--model PATH] [model options] [--out bench/results] [--json]

Starts the server itself (in this process, uvicorn on a free port of 127.0.0.1, as ``fmoe serve`` runs it) on the
model (default: the embedded demo model), with the demo model's eight tools (calculator the built-in one), and
measures, one after the other:

- the first request: the system + tools block is prefilled and pinned (its seconds, cached of prompt tokens);
- a new question with the same tools: the pinned block is reused;
- the tool-result turn of a conversation: the whole previous prompt is reused (its answer is reported);
- a streamed call: seconds to the first tool-call delta and to the end of the stream;
- 8 concurrent clients with 8 different products: wall seconds and how many made the right call.

Writes ``serve_latency.json`` and ``serve_latency.md`` (with the command, date and machine) to ``--out``
(default ``bench/results``). Definitions: docs/reference/server.md, section *Measured*.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from fmoe.errors import FmoeError
from fmoe.kernels.native import cpu_name

PAIRS = [(12, 34), (56, 78), (99, 11), (123, 456), (7, 8), (31, 41), (250, 4), (1000, 3)]


def demo_tools() -> list[dict]:
    from fmoe.tools.builtin_calculator import calculator
    from fmoe.tools.demo import tool_schemas

    tools = dict(tool_schemas())
    tools["calculator"] = calculator.openai_schema()
    return list(tools.values())


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure(url: str, tools: list[dict]) -> dict:
    """The five figures against a running server at ``url`` (a fresh one: the first request pins the block)."""
    import openai

    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    def call(q: str):
        t = time.perf_counter()
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": q}], tools=tools)
        return time.perf_counter() - t, r

    def row(dt, r) -> dict:
        return {"s": round(dt, 3), "prompt_tokens": r.usage.prompt_tokens,
                "cached_tokens": r.usage.prompt_tokens_details.cached_tokens,
                "completion_tokens": r.usage.completion_tokens}

    res: dict = {}
    res["first_request"] = row(*call("What is 1234 * 5678?"))
    res["new_question_same_tools"] = row(*call("What is 4321 * 8765?"))

    msgs = [{"role": "user", "content": "What is 1234 * 5678?"}]
    r1 = c.chat.completions.create(model="m", messages=msgs, tools=tools)
    msgs += [r1.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": r1.choices[0].message.tool_calls[0].id, "content": "7006652"}]
    t = time.perf_counter()
    r2 = c.chat.completions.create(model="m", messages=msgs, tools=tools)
    res["tool_result_turn"] = {**row(time.perf_counter() - t, r2), "answer": r2.choices[0].message.content}

    t, first = time.perf_counter(), None
    for ch in c.chat.completions.create(model="m", messages=[{"role": "user", "content": "What is 1234 * 5678?"}],
                                        tools=tools, stream=True):
        if first is None and ch.choices and ch.choices[0].delta.tool_calls:
            first = time.perf_counter() - t
    res["streamed_call"] = {"first_tool_call_delta_s": round(first, 3) if first is not None else None,
                            "end_s": round(time.perf_counter() - t, 3)}

    qs = [f"What is {a} * {b}?" for a, b in PAIRS]
    t = time.perf_counter()
    with ThreadPoolExecutor(len(qs)) as ex:
        rs = list(ex.map(call, qs))
    wall = time.perf_counter() - t
    right = 0
    for (_, r), (a, b) in zip(rs, PAIRS):
        calls = r.choices[0].message.tool_calls or []
        right += bool(calls) and json.loads(calls[0].function.arguments) == {"expression": f"{a} * {b}"}
    res["concurrent_clients"] = {"clients": len(qs), "wall_s": round(wall, 3), "right_calls": right,
                                 "slowest_s": round(max(d for d, _ in rs), 3)}
    return res


def to_markdown(res: dict) -> str:
    f, n, tr = res["first_request"], res["new_question_same_tools"], res["tool_result_turn"]
    st, cc, m = res["streamed_call"], res["concurrent_clients"], res["machine"]
    first = f"{st['first_tool_call_delta_s']:.2f}" if st["first_tool_call_delta_s"] is not None else "none"
    return (
        "# `fmoe serve` latency (`fmoe bench serve`)\n\n"
        f"Command: `{res['command']}`, {res['date']}. Model: {res['model']}; {res['tools']} tools "
        f"({f['prompt_tokens']:,}-token prompt); the openai SDK against the server started in-process on "
        "127.0.0.1 (uvicorn on a free port).\n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['system']}; 1-min load average before/after "
        f"{m['loadavg_1min_before_after']}.\n\n"
        "| what | result |\n|---|---|\n"
        f"| first request (system + tools block prefilled and pinned) | {f['s']:.2f} s, cached "
        f"{f['cached_tokens']:,} of {f['prompt_tokens']:,} prompt tokens |\n"
        f"| a new question with the same tools | {n['s']:.2f} s, cached {n['cached_tokens']:,} of "
        f"{n['prompt_tokens']:,} (the pinned block) |\n"
        f"| the tool-result turn of the same conversation | {tr['s']:.2f} s, cached {tr['cached_tokens']:,} of "
        f"{tr['prompt_tokens']:,} (the whole previous prompt): {tr['answer']!r} |\n"
        f"| streamed call: first tool-call delta / end | {first} s / {st['end_s']:.2f} s |\n"
        f"| {cc['clients']} concurrent clients ({cc['clients']} different products) | {cc['wall_s']:.2f} s wall, "
        f"{cc['right_calls']}/{cc['clients']} right calls (slowest {cc['slowest_s']:.2f} s) |\n\n"
        "Definitions: docs/reference/server.md, section *Measured*.\n")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="fmoe bench serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the embedded demo model)")
    ap.add_argument("--backend", default="torch", help="torch (default) or mlx")
    ap.add_argument("--device", default=None, help="torch device: cpu (default) or cuda")
    ap.add_argument("--out", default="bench/results", help="write serve_latency.json and .md here "
                                                          "(default bench/results; '' to write nothing)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "sse_starlette", "openai") if importlib.util.find_spec(m) is None]
    if missing:
        raise FmoeError(f"fmoe bench serve needs the 'serve' extra and the openai SDK ({', '.join(missing)} "
                        "missing): pip install 'fmoe[serve]' openai")
    from fmoe.engine.loader import ModelOptions, load, resolve_model
    from fmoe.server.run import BackgroundServer

    load_before = _loadavg()
    model, tok = load(resolve_model(args.model), ModelOptions(backend=args.backend, device=args.device))
    name = "fmoe-demo" if args.model is None else Path(args.model).expanduser().name
    tools = demo_tools()
    with BackgroundServer(model, tok, port=0, name=name) as srv:
        res = measure(srv.url, tools)
    res = {"command": " ".join(["fmoe", "bench", "serve", *argv]),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "model": name + (" (4-bit streaming layout)" if args.model is None else ""), "tools": len(tools),
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "system": f"{platform.system()} "
                       f"{platform.machine()}, Python {platform.python_version()}",
                       "loadavg_1min_before_after": [load_before, _loadavg()]},
           **res}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve_latency.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / "serve_latency.md").write_text(to_markdown(res))
    print(json.dumps(res) if args.json else to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
