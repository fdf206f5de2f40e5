"""Fast-forward on the engine: tool-call tokens/s, forward passes and expert bytes per call, with and without it.

    fmoe bench fastforward [--model DIR] [--bits 4] [--cases 16] [--json] [--out DIR]

The same greedy, grammar-constrained first turn of each held-out case that expects a call (the built-in
`demo-heldout` suite, demo model by default, converted to the streaming layout at --bits) is generated twice: with
fast-forward (the grammar's forced tokens are appended without sampling and fed to the engine as one batched pass)
and without it (one decode step per token). Greedy decoding makes both produce the same text, which is checked.
Expert bytes are what the expert store was asked for during decoding (a batched pass reads each routed expert once
for all its tokens). Writes fastforward.json / fastforward.md under --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def run(model_dir: str | Path | None = None, bits: int = 4, n_cases: int = 16, progress: bool = True) -> dict:
    from fmoe.agent.turn import PrefixCache, TurnSettings, run_turn
    from fmoe.demo import MODEL_DIR
    from fmoe.engine.loader import load_model, load_tokenizer, quantized_variant
    from fmoe.eval.suite import resolve_suite
    from fmoe.structured.formats import detect_call_format
    from fmoe.structured.grammar import compile_tool_grammar

    src = Path(model_dir) if model_dir else MODEL_DIR
    vdir = quantized_variant(src, bits, quiet=not progress)
    model = load_model(vdir)
    tok = load_tokenizer(vdir, model)
    suite = resolve_suite("demo-heldout")
    fmt = detect_call_format(tok.chat_template or "")
    cases = [c for c in suite.cases if c.expect.calls][:n_cases]
    rows = []
    for i, case in enumerate(cases):
        tools = suite.tool_schemas(case)
        msgs = [m.model_dump(exclude_none=True) for m in case.messages]
        grammar = compile_tool_grammar(tools, call_format=fmt, tool_choice=case.tool_choice, thinking=case.thinking,
                                       tokenizer=tok, vocab_size=model.cfg.vocab_size)

        def turn(fast_forward: bool):   # a fresh conversation each time: the same prefill, decode measured alone
            settings = TurnSettings(max_tokens=suite.max_tokens, thinking=case.thinking, call_format=fmt,
                                    fast_forward=fast_forward)
            return run_turn(model, tok, msgs, tools, settings, PrefixCache(model), grammar=grammar)

        turn(True)            # warm-up: page cache and the grammar's lexer
        on, off = turn(True), turn(False)
        if on.text != off.text:
            raise AssertionError(f"{case.id}: fast-forward changed the greedy output:\n{on.text!r}\n{off.text!r}")
        on_s, off_s = on.timings["decode_s"], off.timings["decode_s"]
        rows.append({"case": case.id, "calls": len(on.calls), "tokens": on.tokens,
                     "on": {"decode_s": on_s, "forward_passes": on.decode_passes, "expert_bytes": on.decode_bytes},
                     "off": {"decode_s": off_s, "forward_passes": off.decode_passes,
                             "expert_bytes": off.decode_bytes}})
        if progress:
            print(f"  {case.id}: {on.tokens} tokens, passes {off.decode_passes} -> {on.decode_passes}, "
                  f"expert MB {off.decode_bytes / 1e6:.2f} -> {on.decode_bytes / 1e6:.2f}, "
                  f"s {off_s:.2f} -> {on_s:.2f}  ({i + 1}/{len(cases)})", file=sys.stderr)
    calls = sum(r["calls"] for r in rows) or 1
    toks = sum(r["tokens"] for r in rows)

    def side(k: str) -> dict:
        s = sum(r[k]["decode_s"] for r in rows)
        return {"tool_call_tokens_per_s": toks / s if s else 0.0,
                "forward_passes_per_call": sum(r[k]["forward_passes"] for r in rows) / calls,
                "expert_bytes_per_call": sum(r[k]["expert_bytes"] for r in rows) / calls,
                "decode_s_total": s}

    res = {"model": str(src), "bits": bits, "call_format": fmt, "cases": len(rows), "calls": calls,
           "tokens": toks, "tokens_per_call": toks / calls, "with_fast_forward": side("on"),
           "without_fast_forward": side("off"), "rows": rows}
    w, wo = res["with_fast_forward"], res["without_fast_forward"]
    res["speedup"] = w["tool_call_tokens_per_s"] / wo["tool_call_tokens_per_s"] if wo["tool_call_tokens_per_s"] else 0
    res["expert_bytes_ratio"] = w["expert_bytes_per_call"] / wo["expert_bytes_per_call"] \
        if wo["expert_bytes_per_call"] else 0
    res["median_case_speedup"] = statistics.median(
        (r["off"]["decode_s"] / r["on"]["decode_s"]) for r in rows if r["on"]["decode_s"]) if rows else 0
    return res


def markdown(res: dict) -> str:
    w, wo = res["with_fast_forward"], res["without_fast_forward"]
    return "\n".join([
        f"# Fast-forward on the engine (`fmoe bench fastforward --bits {res['bits']}`)",
        "",
        f"Model `{res['model']}` at {res['bits']} bits (streaming layout), {res['call_format']} calls, greedy with the "
        f"grammar, {res['cases']} held-out cases that expect a call ({res['calls']} calls, "
        f"{res['tokens_per_call']:.1f} tokens per call). Same text with and without fast-forward (checked).",
        "",
        "| | tool-call tokens/s | forward passes per call | expert bytes per call |",
        "|---|---|---|---|",
        f"| without fast-forward | {wo['tool_call_tokens_per_s']:.1f} | {wo['forward_passes_per_call']:.1f} | "
        f"{wo['expert_bytes_per_call'] / 1e6:.2f} MB |",
        f"| with fast-forward | {w['tool_call_tokens_per_s']:.1f} | {w['forward_passes_per_call']:.1f} | "
        f"{w['expert_bytes_per_call'] / 1e6:.2f} MB |",
        f"| ratio | {res['speedup']:.2f}x | | {res['expert_bytes_ratio']:.2f} |",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fmoe bench fastforward", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="Hugging Face checkpoint directory (default: the demo model)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = run(a.model, a.bits, a.cases)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fastforward.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / "fastforward.md").write_text(markdown(res))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1) if a.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
