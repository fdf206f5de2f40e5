"""``fmoe eval`` runs: variants (bits x experts-per-token x grammar), per-case scoring, metrics, KL divergence.

    variants = plan_variants(bits=[2, 4], experts=[None], grammar=[True, False])
    results = run_eval(suite, model_path, variants, out_dir, limit=20)   # -> {"variants": [...], "failures": {...}}

Each case runs through the agent (fmoe.agent.loop.Agent: the same turn, prefix reuse, repeat stop and tool timeout as
``fmoe run``): one turn for a single-turn case, the whole loop with the case's tools for a looping case. Per variant:
    parse_rate          turns that attempted a call (<tool_call> in the output) whose calls all parse
                        (not unparsable / truncated); null when no turn attempted a call
    schema_valid_rate   of the same turns, those whose calls all name a declared tool and validate
    tool_accuracy       first turn: the right tool names (as a multiset; no call where none is right)
    argument_accuracy   first turn: right tools and right arguments (BFCL cases: BFCL's AST checker)
    answer_accuracy     cases run to a final answer with the tools (suite ``loop``): every expected string present
    tok_s               generated tokens / decode seconds (forced grammar tokens included: output speed)
    sampled_tok_s       sampled tokens (generated minus forced) / decode seconds
    bytes_per_token     expert bytes read from the streaming layout per generated token (forced ones included:
                        grammar-on and grammar-off rows compare per token of output)
    bytes_per_pass      the same bytes per decode forward pass (fast-forwarded tokens share one pass)
    calls_closed_early  calls the grammar steered to their end because the token budget ran out (max_call_tokens)
    kl_vs_reference     mean over positions of KL(reference || variant) of next-token distributions, teacher-forced
                        on the suite's rendered conversations; the reference is the highest bits with the most experts
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmoe.eval.suite import Case, Suite
from fmoe.errors import FmoeError

METRICS = ("parse_rate", "schema_valid_rate", "tool_accuracy", "argument_accuracy", "answer_accuracy", "tok_s",
           "sampled_tok_s", "bytes_per_token", "bytes_per_pass", "kl_vs_reference")
PARSE_FAILS = ("unparsable", "truncated")
SCHEMA_FAILS = ("unparsable", "truncated", "unknown_tool", "schema_violation")


@dataclass(frozen=True)
class Variant:
    bits: int
    experts_per_token: int | None      # None: the model's own setting
    grammar: bool

    def label(self, default_k: int | None = None) -> str:
        k = default_k if self.experts_per_token is None else self.experts_per_token
        return f"{self.bits}bit-k{k}-{'grammar' if self.grammar else 'free'}"


def plan_variants(bits: Sequence[int], experts: Sequence[int | None], grammar: Sequence[bool],
                  cross: bool = False, cross_bits: int = 4) -> list[Variant]:
    """The full grid, or with ``cross`` the bits sweep at the first experts-per-token value plus the
    experts-per-token sweep at ``cross_bits``."""
    out: list[Variant] = []
    if cross:
        pairs = [(b, experts[0]) for b in bits] + [(cross_bits, k) for k in experts]
    else:
        pairs = [(b, k) for b in bits for k in experts]
    for b, k in pairs:
        for g in grammar:
            v = Variant(int(b), k, bool(g))
            if v not in out:
                out.append(v)
    return out


# --------------------------------------------------------------------------------------------------- scoring
def _norm(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def score_first_turn(case: Case, calls: list[tuple[str, dict]], tools: list[dict]) -> tuple[bool, bool, str | None]:
    """(right tool, right arguments, failure category) of the first turn's calls."""
    if case.expect.bfcl is not None:
        from fmoe.eval.bfcl import check_bfcl

        r = check_bfcl(calls, case.expect.bfcl, [t["function"] for t in tools])
        return r.tool_ok, r.ok, r.category
    exp = (case.expect.calls or [[]])[0] if case.expect.calls is not None else None
    if exp is None:
        return False, False, None
    if sorted(n for n, _ in calls) != sorted(c.name for c in exp):
        return False, False, ("unexpected_call" if not exp else "wrong_tool")
    left = list(calls)
    for c in exp:
        hit = next((i for i, (n, a) in enumerate(left) if n == c.name and _norm(a) == _norm(c.arguments)), None)
        if hit is None:
            return True, False, "wrong_arguments"
        left.pop(hit)
    return True, True, None


@dataclass
class Acc:
    turns: int = 0
    attempts: int = 0
    parsed: int = 0
    valid: int = 0
    scored: int = 0
    tool_ok: int = 0
    args_ok: int = 0
    looped: int = 0
    answer_ok: int = 0
    gen_tokens: int = 0
    forced_tokens: int = 0
    closed_early: int = 0
    decode_s: float = 0.0
    decode_bytes: int = 0
    decode_steps: int = 0
    failures: dict = field(default_factory=dict)

    def add_turn(self, step) -> None:
        """Count one assistant turn (a fmoe.agent.steps.ModelStep)."""
        self.turns += 1
        self.gen_tokens += step.tokens
        self.forced_tokens += step.forced_tokens
        self.closed_early += getattr(step, "closed_early", 0)
        self.decode_s += step.timings.get("decode_s", 0.0)
        self.decode_bytes += step.decode_bytes
        self.decode_steps += step.decode_passes
        if "<tool_call>" in step.text:
            self.attempts += 1
            category = step.parse_failure.category if step.parse_failure else None
            self.parsed += int(category not in PARSE_FAILS)
            self.valid += int(category not in SCHEMA_FAILS)

    def metrics(self) -> dict:
        def r(a, b):   # a rate, or None when nothing was counted
            return (a / b) if b else None
        return {"parse_rate": r(self.parsed, self.attempts), "schema_valid_rate": r(self.valid, self.attempts),
                "tool_accuracy": r(self.tool_ok, self.scored), "argument_accuracy": r(self.args_ok, self.scored),
                "answer_accuracy": r(self.answer_ok, self.looped),
                "tok_s": r(self.gen_tokens, self.decode_s),
                "sampled_tok_s": r(self.gen_tokens - self.forced_tokens, self.decode_s),
                "bytes_per_token": r(self.decode_bytes, self.gen_tokens),
                "bytes_per_pass": r(self.decode_bytes, self.decode_steps),
                "calls_closed_early": self.closed_early, "forced_tokens": self.forced_tokens,
                "call_attempt_rate": r(self.attempts, self.turns), "turns": self.turns, "cases_scored": self.scored,
                "cases_looped": self.looped, "generated_tokens": self.gen_tokens}


def case_registry(suite: Suite, case: Case, workspace: str):
    """The case's tools as a ToolRegistry, in the case's order: the demo model's tools for real (file tools in
    ``workspace``, the clock seeded with the case's time_seed), declared-only tools answering their validated arguments (SchemaTool)."""
    from fmoe.tools.demo import TOOL_NAMES, demo_registry
    from fmoe.tools.registry import ToolRegistry
    from fmoe.tools.schema_tools import SchemaTool

    demo = demo_registry(workspace, time_seed=case.time_seed)
    reg = ToolRegistry()
    for spec, schema in zip(case.tools, suite.tool_schemas(case)):
        by_name = isinstance(spec, str) and spec not in suite.tools and spec in TOOL_NAMES
        reg.add(demo.get(spec) if by_name else SchemaTool.from_spec(schema))
    return reg


def case_agent(model, tok, suite: Suite, case: Case, grammar: bool, call_format: str, workspace: str):
    """The agent that runs ``case``: greedy, the suite's token and step budgets, the case's tool choice."""
    from fmoe.agent.loop import Agent
    from fmoe.engine.generate import Sampling

    return Agent(model, tok, case_registry(suite, case, workspace), tool_choice=case.tool_choice,
                 max_steps=suite.max_steps if suite.case_loops(case) else 1, max_tokens=suite.max_tokens,
                 max_call_tokens=suite.max_call_tokens,
                 sampling=Sampling(temperature=0.0), thinking=case.thinking, constrained=grammar,
                 call_format=call_format)


def run_case(model, tok, suite: Suite, case: Case, grammar: bool, call_format: str, acc: Acc, failures: dict,
             variant_label: str) -> dict:
    """Run one case through the agent and score it into ``acc``; returns the case record."""
    with tempfile.TemporaryDirectory(prefix="fmoe-eval-ws-") as ws:
        for rel, text in case.workspace.items():
            f = Path(ws, rel)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text, encoding="utf-8")
        agent = case_agent(model, tok, suite, case, grammar, call_format, ws)
        messages = [m.model_dump(exclude_none=True) for m in case.messages]
        loops = suite.case_loops(case)
        if loops:
            result = agent.run_messages(messages)
            turns = result.model_steps
        else:
            turns = [agent.turn(messages)]
    first = turns[0]
    for t in turns:
        acc.add_turn(t)
        if t is not first and t.parse_failure:
            _fail(failures, variant_label, t.parse_failure.category, case, t.text, t.parse_failure.message)
    rec: dict = {"id": case.id, "kind": case.kind, "output": first.text,
                 "calls": [{"name": c.name, "arguments": c.arguments} for t in turns for c in t.calls]}
    calls = [(c.name, c.arguments) for c in first.calls]
    if first.parse_failure:
        _fail(failures, variant_label, first.parse_failure.category, case, first.text, first.parse_failure.message)
    if case.expect.bfcl is not None or case.expect.calls is not None:
        tool_ok, args_ok, why = score_first_turn(case, calls, agent.schemas)
        acc.scored += 1
        acc.tool_ok += int(tool_ok)
        acc.args_ok += int(args_ok)
        rec.update(tool_ok=tool_ok, args_ok=args_ok)
        if why and not first.parse_failure:
            _fail(failures, variant_label, why, case, first.text, "")
    if loops:
        acc.looped += 1
        final = (result.answer if result.stop_reason == "final_answer" else "") or ""
        ok = all(s.lower() in final.lower() for s in case.expect.answer or [])
        acc.answer_ok += int(ok)
        rec.update(answer=final, answer_ok=ok, stop_reason=result.stop_reason)
        if not ok:
            _fail(failures, variant_label, "wrong_answer", case, final, f"expected {case.expect.answer}")
    return rec


def _fail(failures: dict, label: str, cat: str, case: Case, text: str, message: str, keep: int = 5) -> None:
    lst = failures.setdefault(cat, [])
    n = sum(1 for f in lst if f["variant"] == label)
    failures.setdefault("_counts", {}).setdefault(label, {}).setdefault(cat, 0)
    failures["_counts"][label][cat] += 1
    if n < keep:
        lst.append({"variant": label, "case": case.id, "kind": case.kind, "message": message, "output": text[:600]})


# --------------------------------------------------------------------------------------------------- KL
def kl_texts(suite: Suite, tok, cases: Sequence[Case], n: int = 12, max_len: int = 384) -> list[list[int]]:
    """Token ids of the first ``n`` cases' conversations (prompt + reference continuation), rendered."""
    out = []
    for c in list(cases)[:n]:
        msgs = [m.model_dump(exclude_none=True) for m in list(c.messages) + list(c.reference)]
        tools = suite.tool_schemas(c)
        text = tok.apply_chat_template(msgs, tools=tools or None, add_generation_prompt=not c.reference,
                                       enable_thinking=c.thinking)
        ids = tok.encode(text)
        out.append(ids[-max_len:] if len(ids) > max_len else ids)
    return out


def logprobs(model, texts: list[list[int]], vocab: int) -> list[np.ndarray]:
    out = []
    for ids in texts:
        logits = model.ops.to_numpy(model.forward(ids, model.new_cache(), all_logits=True))
        x = np.asarray(logits, dtype=np.float64)[:, :vocab]
        x = x - x.max(-1, keepdims=True)
        out.append((x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32))
    return out


def mean_kl(ref: list[np.ndarray], var: list[np.ndarray]) -> float:
    tot, n = 0.0, 0
    for p, q in zip(ref, var):
        pp = np.exp(p.astype(np.float64))
        tot += float((pp * (p.astype(np.float64) - q.astype(np.float64))).sum())
        n += p.shape[0]
    return tot / n if n else 0.0


# --------------------------------------------------------------------------------------------------- driver
def run_eval(suite: Suite, model_path: str | Path, variants: Sequence[Variant], out_dir: str | Path | None = None,
             limit: int | None = None, options=None, progress: bool = True, kl_n: int = 12,
             kl_max_len: int = 384, log=None) -> dict:
    """Every case on every variant; returns {"suite", "model", "variants": [...], "failures": {...}}. ``options``
    (fmoe.engine.loader.ModelOptions) say how each variant runs; experts per token come from the variants."""
    from fmoe.engine.loader import ModelOptions, load_model, load_tokenizer, quantized_variant
    from fmoe.storage.checkpoint import open_checkpoint
    from fmoe.structured.formats import detect_call_format

    options = replace(options or ModelOptions(), experts_per_token=None)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True) if progress else None)
    src = Path(model_path)
    cases = list(suite.cases)[:limit] if limit else list(suite.cases)
    if not variants:
        raise FmoeError("no variants to run")
    from fmoe.eval.suite import check_suite_schemas
    from fmoe.structured.formats import detect_call_format_dir

    # unsupported schema keywords are refused before any variant is converted or loaded
    check_suite_schemas(suite.model_copy(update={"cases": cases}), suite.name,
                        call_format=suite.call_format if suite.call_format != "auto" else detect_call_format_dir(src))
    dirs = {b: quantized_variant(src, b, quiet=not progress) for b in sorted({v.bits for v in variants})}
    tok = load_tokenizer(dirs[min(dirs)])
    call_format = suite.call_format if suite.call_format != "auto" else detect_call_format(tok.chat_template or "")
    checkpoint = open_checkpoint(dirs[min(dirs)])
    default_k, n_experts = checkpoint.config.num_experts_per_tok, checkpoint.config.num_experts
    if hasattr(checkpoint, "close"):
        checkpoint.close()
    ks = {default_k if v.experts_per_token is None else v.experts_per_token for v in variants}
    if max(ks) > n_experts or min(ks) < 1:
        raise FmoeError(f"--experts-per-token: each value must be in 1..{n_experts} (the model's experts), "
                        f"got {sorted(ks)}")
    vocab = tok.vocab_size
    texts = kl_texts(suite, tok, cases, kl_n, kl_max_len)
    ref_bits, ref_k = max(v.bits for v in variants), max(ks)
    log(f"fmoe eval: reference for KL = {ref_bits} bits, {ref_k} experts/token ({len(texts)} texts, "
        f"{sum(map(len, texts))} positions)")
    results, failures = [], {}
    by_bits: dict[int, list[Variant]] = {}
    for v in sorted(variants, key=lambda v: v.bits != ref_bits):   # the reference's bits first: one load
        by_bits.setdefault(v.bits, []).append(v)
    ref_lp = None
    for bits, vs in by_bits.items():
        # a converted variant streams its experts (page-cache mode); bits 16 loads the checkpoint itself
        model = load_model(dirs[bits], options)
        if ref_lp is None:
            model.set_experts_per_token(ref_k)
            ref_lp = logprobs(model, texts, vocab)
        kl_cache: dict[int, float] = {}
        for v in vs:
            k = default_k if v.experts_per_token is None else v.experts_per_token
            model.set_experts_per_token(k)
            if k not in kl_cache:
                kl_cache[k] = 0.0 if (bits, k) == (ref_bits, ref_k) else mean_kl(ref_lp, logprobs(model, texts, vocab))
            acc = Acc()
            label = Variant(bits, k, v.grammar).label()
            t0 = time.perf_counter()
            records = []
            for i, case in enumerate(cases):
                records.append(run_case(model, tok, suite, case, v.grammar, call_format, acc, failures, label))
                if progress and (i + 1) % 10 == 0:
                    log(f"  {label}: {i + 1}/{len(cases)} cases ({time.perf_counter() - t0:.0f} s)")
            m = acc.metrics()
            m["kl_vs_reference"] = kl_cache[k]
            entry = {"variant": label, "bits": bits, "experts_per_token": k, "grammar": v.grammar, **m,
                     "wall_s": round(time.perf_counter() - t0, 2), "cases": len(cases)}
            results.append(entry)
            log(f"fmoe eval: {label}: " + ", ".join(f"{key}={_fmt(entry[key])}" for key in METRICS))
            if out_dir is not None:
                d = Path(out_dir) / "cases"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        del model
    order = [Variant(v.bits, default_k if v.experts_per_token is None else v.experts_per_token, v.grammar).label()
             for v in variants]
    results.sort(key=lambda r: order.index(r["variant"]))
    counts = failures.pop("_counts", {})
    return {"suite": suite.name, "model": str(src), "backend": options.backend, "call_format": call_format,
            "cases": len(cases), "kl_reference": {"bits": ref_bits, "experts_per_token": ref_k,
                                                  "texts": len(texts), "positions": sum(map(len, texts))},
            "variants": results, "failure_counts": counts, "failures": failures}


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


# --------------------------------------------------------------------------------------------------- remote
def run_eval_remote(suite: Suite, model, out_dir: str | Path | None = None, limit: int | None = None,
                    progress: bool = True, log=None) -> dict:
    """Every case against a remote model (fmoe.agent.remote.RemoteModel: an OpenAI-compatible endpoint). One
    variant, "remote": bits, experts per token and the grammar do not apply (the endpoint decodes unconstrained;
    its calls are parsed and schema-checked here, so parse_rate and schema_valid_rate are the remote's own), and
    kl_vs_reference is null (no local logits): ``kl_reference`` says why."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True) if progress else None)
    cases = list(suite.cases)[:limit] if limit else list(suite.cases)
    acc, failures, records = Acc(), {}, []
    label = "remote"
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        records.append(run_case(model, None, suite, case, False, "hermes", acc, failures, label))
        if progress and (i + 1) % 10 == 0:
            log(f"  {label}: {i + 1}/{len(cases)} cases ({time.perf_counter() - t0:.0f} s)")
    m = acc.metrics()
    m["kl_vs_reference"] = None
    m["bytes_per_token"] = m["bytes_per_pass"] = None
    entry = {"variant": label, "bits": None, "experts_per_token": None, "grammar": None, **m,
             "wall_s": round(time.perf_counter() - t0, 2), "cases": len(cases)}
    log(f"fmoe eval: {label}: " + ", ".join(f"{key}={_fmt(entry[key])}" for key in METRICS))
    if out_dir is not None:
        d = Path(out_dir) / "cases"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = failures.pop("_counts", {})
    return {"suite": suite.name, "model": str(model), "backend": "remote", "call_format": "openai tools",
            "cases": len(cases), "remote": True,
            "kl_reference": {"skipped": "remote model: no local logits; bits, experts and grammar variants do not "
                                        "apply"},
            "variants": [entry], "failure_counts": counts, "failures": failures}
