"""``fmoe eval`` runs: variants (bits x experts-per-token x grammar), per-case scoring, metrics, KL divergence.

    variants = plan_variants(bits=[2, 4], experts=[None], grammar=[True, False])
    results = run_eval(suite, model_path, variants, out_dir, limit=20)   # -> {"variants": [...], "failures": {...}}

Per assistant turn the output is parsed with fmoe.structured.parser; per variant:
    parse_rate          turns that attempted a call (<tool_call> in the output) whose calls all parse
                        (not unparsable / truncated); null when no turn attempted a call
    schema_valid_rate   of the same turns, those whose calls all name a declared tool and validate
    tool_accuracy       first turn: the right tool names (as a multiset; no call where none is right)
    argument_accuracy   first turn: right tools and right arguments (BFCL cases: BFCL's AST checker)
    answer_accuracy     cases run to a final answer with the tools (suite ``loop``): every expected string present
    tok_s               generated tokens / decode seconds (forced grammar tokens included)
    bytes_per_token     expert bytes read from the streaming layout per decoded token
    kl_vs_reference     mean over positions of KL(reference || variant) of next-token distributions, teacher-forced
                        on the suite's rendered conversations; the reference is the highest bits with the most experts
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmoe.eval.suite import Case, Suite
from fmoe.errors import FmoeError

METRICS = ("parse_rate", "schema_valid_rate", "tool_accuracy", "argument_accuracy", "answer_accuracy", "tok_s",
           "bytes_per_token", "kl_vs_reference")
PARSE_FAILS = ("unparsable", "truncated")
SCHEMA_FAILS = ("unparsable", "truncated", "unknown_tool", "schema_violation")


@dataclass(frozen=True)
class Variant:
    bits: int
    experts_per_token: int | None      # None: the model's own setting
    grammar: bool

    def label(self, default_k: int | None = None) -> str:
        k = self.experts_per_token or default_k
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


# --------------------------------------------------------------------------------------------------- variants
def _group_size(src: Path) -> int:
    from fmoe.storage.checkpoint import open_checkpoint

    ck = open_checkpoint(src)
    c = ck.config
    dims = [c.hidden_size, c.moe_intermediate_size, c.shared_expert_intermediate_size]
    if hasattr(ck, "close"):
        ck.close()
    for g in (64, 32):
        if all(d % g == 0 for d in dims):
            return g
    return 32


def variant_dir(src: str | Path, bits: int, progress: bool = True) -> Path:
    """``src`` converted to the streaming layout at ``bits`` (cached under cache_dir()/variants/<hash>-<bits>bit);
    ``bits`` 16 is the checkpoint itself, unquantized (the demo model's bf16 weights, loaded the Hugging Face way)."""
    from fmoe.storage.convert import convert
    from fmoe.engine.loader import _digest, cache_dir

    src = Path(src)
    if bits == 16:
        return src
    dst = cache_dir() / "variants" / f"{_digest(src)}-{bits}bit"
    if (dst / "manifest.json").exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"fmoe eval: converting {src} to {bits} bits -> {dst}", file=sys.stderr)
    convert(src, dst, bits=bits, group_size=_group_size(src), progress=progress, overwrite=dst.exists())
    return dst


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
class Turn:
    text: str
    parse: Any
    finished: bool
    gen_tokens: int
    decode_s: float
    decode_bytes: int
    decode_steps: int


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
    decode_s: float = 0.0
    decode_bytes: int = 0
    decode_steps: int = 0
    failures: dict = field(default_factory=dict)

    def add_turn(self, t: Turn) -> None:
        self.turns += 1
        self.gen_tokens += t.gen_tokens
        self.decode_s += t.decode_s
        self.decode_bytes += t.decode_bytes
        self.decode_steps += t.decode_steps
        if "<tool_call>" in t.text:
            self.attempts += 1
            f = t.parse.failure
            self.parsed += int(f is None or f.category not in PARSE_FAILS)
            self.valid += int(f is None or f.category not in SCHEMA_FAILS)

    def metrics(self) -> dict:
        r = lambda a, b: (a / b) if b else None
        return {"parse_rate": r(self.parsed, self.attempts), "schema_valid_rate": r(self.valid, self.attempts),
                "tool_accuracy": r(self.tool_ok, self.scored), "argument_accuracy": r(self.args_ok, self.scored),
                "answer_accuracy": r(self.answer_ok, self.looped),
                "tok_s": r(self.gen_tokens, self.decode_s), "bytes_per_token": r(self.decode_bytes, self.decode_steps),
                "call_attempt_rate": r(self.attempts, self.turns), "turns": self.turns, "cases_scored": self.scored,
                "cases_looped": self.looped, "generated_tokens": self.gen_tokens}


class Runner:
    """One loaded model + tokenizer; generates and scores turns for any case of a suite."""

    def __init__(self, model, tok, suite: Suite, call_format: str):
        self.model, self.tok, self.suite, self.call_format = model, tok, suite, call_format
        self._grammars: dict[str, Any] = {}

    def grammar(self, tools: list[dict], choice: str, thinking: bool):
        from fmoe.structured.grammar import compile_tool_grammar

        key = json.dumps([tools, choice, thinking], sort_keys=True)
        g = self._grammars.get(key)
        if g is None:
            g = compile_tool_grammar(tools, call_format=self.call_format, tool_choice=choice, thinking=thinking,
                                     tokenizer=self.tok, vocab_size=self.model.cfg.vocab_size)
            self._grammars[key] = g
        return g

    def _bytes(self) -> int:
        return int(self.model.stats().get("bytes_read", 0) or 0)

    def turn(self, messages: list[dict], tools: list[dict], case: Case, grammar: bool,
             fast_forward: bool = True) -> Turn:
        from fmoe.structured.processor import ToolCallProcessor
        from fmoe.structured.parser import parse_tool_calls
        from fmoe.engine.generate import Generation, Sampling

        prompt = self.tok.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                              enable_thinking=case.thinking)
        ids = self.tok.encode(prompt)
        procs = [ToolCallProcessor(self.grammar(tools, case.tool_choice, case.thinking))] if grammar else []
        gen = Generation(self.model, ids, max_tokens=self.suite.max_tokens, sampling=Sampling(temperature=0.0),
                         stop_ids=self.tok.eos_token_ids, processors=procs,
                         vocab_limit=self.tok.vocab_size, fast_forward=fast_forward)
        b1 = None
        toks: list[int] = []
        for step in gen:
            if b1 is None:
                b1 = self._bytes()          # after prefill: decode bytes start here
            toks.append(step.token_id)
        b2 = self._bytes()
        st = gen.stats
        finished = st.finish_reason in ("stop", "grammar")
        text = self.tok.decode([t for t in toks if t not in self.tok.eos_token_ids])
        parse = parse_tool_calls(text, self.call_format, tools, finished=finished)
        chunks = -(-st.prefilled_tokens // gen.prefill_chunk)
        steps = max(0, st.forward_passes - chunks)   # decode forward passes
        return Turn(text, parse, finished, st.generated_tokens, st.decode_s, (b2 - b1) if b1 is not None else 0,
                    steps)


def _assistant_message(turn: Turn) -> dict:
    calls = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in turn.parse.calls]
    return {"role": "assistant", "content": turn.parse.content if calls else turn.text.strip(),
            **({"tool_calls": calls} if calls else {})}


class _Executor:
    """Runs a case's tools: the demo tools for real (training.datagen.Executor, in a temporary workspace),
    declared-only tools echo their arguments."""

    def __init__(self, case: Case):
        from training.datagen import Executor

        self.ex = Executor(case.workspace)

    def __call__(self, name: str, args: dict) -> str:
        from fmoe.eval.suite import DEMO_TOOL_NAMES

        if name not in DEMO_TOOL_NAMES:
            return json.dumps(args)
        try:
            content, _ = self.ex(name, args)
        except Exception as e:  # noqa: BLE001  a tool crash is a tool error the model sees
            content = f"Error: {e}"
        return content

    def close(self):
        self.ex.close()


def run_case(runner: Runner, case: Case, grammar: bool, acc: Acc, failures: dict, variant_label: str) -> dict:
    suite = runner.suite
    tools = suite.tool_schemas(case)
    messages = [m.model_dump(exclude_none=True) for m in case.messages]
    t = runner.turn(messages, tools, case, grammar)
    acc.add_turn(t)
    rec: dict = {"id": case.id, "kind": case.kind, "output": t.text}
    calls = [(c.name, c.arguments) for c in t.parse.calls]
    cat = t.parse.failure.category if t.parse.failure else None
    if cat and cat != "no_call":
        calls_for_score = calls if cat not in PARSE_FAILS else calls
        _fail(failures, variant_label, cat, case, t.text, t.parse.failure.message)
    else:
        calls_for_score = calls
    if case.expect.bfcl is not None or case.expect.calls is not None:
        tool_ok, args_ok, why = score_first_turn(case, calls_for_score, tools)
        acc.scored += 1
        acc.tool_ok += int(tool_ok)
        acc.args_ok += int(args_ok)
        rec.update(tool_ok=tool_ok, args_ok=args_ok)
        if why and not (cat and cat != "no_call"):
            _fail(failures, variant_label, why, case, t.text, "")
    if suite.case_loops(case):
        acc.looped += 1
        ex = _Executor(case)
        try:
            steps = 1
            while t.parse.calls and steps < suite.max_steps:
                messages.append(_assistant_message(t))
                for c in t.parse.calls:
                    messages.append({"role": "tool", "name": c.name, "content": ex(c.name, c.arguments)})
                t = runner.turn(messages, tools, case, grammar)
                acc.add_turn(t)
                steps += 1
                if t.parse.failure and t.parse.failure.category != "no_call":
                    _fail(failures, variant_label, t.parse.failure.category, case, t.text, t.parse.failure.message)
        finally:
            ex.close()
        final = t.parse.content if not t.parse.calls else ""
        ok = all(s.lower() in final.lower() for s in case.expect.answer or [])
        acc.answer_ok += int(ok)
        rec.update(answer=final, answer_ok=ok)
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
def load_model(path: Path, backend: str, k: int | None):
    from fmoe.engine.model import Model

    # a converted variant streams its experts (page-cache mode, the default); --bits 16 loads the checkpoint itself
    return Model.load(path, backend=backend, experts_per_token=k)


def run_eval(suite: Suite, model_path: str | Path, variants: Sequence[Variant], out_dir: str | Path | None = None,
             limit: int | None = None, backend: str = "torch", progress: bool = True, kl_n: int = 12,
             kl_max_len: int = 384, log=None) -> dict:
    """Every case on every variant; returns {"suite", "model", "variants": [...], "failures": {...}}."""
    from fmoe.structured.call_format import detect_call_format
    from fmoe.engine.tokenizer import Tokenizer

    log = log or (lambda s: print(s, file=sys.stderr, flush=True) if progress else None)
    src = Path(model_path)
    cases = list(suite.cases)[:limit] if limit else list(suite.cases)
    if not variants:
        raise FmoeError("no variants to run")
    dirs = {b: variant_dir(src, b, progress) for b in sorted({v.bits for v in variants})}
    tok = Tokenizer.from_dir(dirs[min(dirs)])
    call_format = suite.call_format if suite.call_format != "auto" else detect_call_format(tok.chat_template or "")
    from fmoe.storage.config import ModelConfig  # noqa: F401  (config read via the checkpoint below)
    from fmoe.storage.checkpoint import open_checkpoint

    ck = open_checkpoint(dirs[min(dirs)])
    default_k, n_experts = ck.config.num_experts_per_tok, ck.config.num_experts
    if hasattr(ck, "close"):
        ck.close()
    ks = {v.experts_per_token or default_k for v in variants}
    if max(ks) > n_experts:
        raise FmoeError(f"experts per token {max(ks)} > the model's {n_experts} experts")
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
        model = load_model(dirs[bits], backend, None)
        if ref_lp is None:
            model.set_experts_per_token(ref_k)
            ref_lp = logprobs(model, texts, vocab)
        kl_cache: dict[int, float] = {}
        for v in vs:
            k = v.experts_per_token or default_k
            model.set_experts_per_token(k)
            if k not in kl_cache:
                kl_cache[k] = 0.0 if (bits, k) == (ref_bits, ref_k) else mean_kl(ref_lp, logprobs(model, texts, vocab))
            runner = Runner(model, tok, suite, call_format)
            acc = Acc()
            label = Variant(bits, k, v.grammar).label()
            t0 = time.perf_counter()
            records = []
            for i, case in enumerate(cases):
                records.append(run_case(runner, case, v.grammar, acc, failures, label))
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
    order = [Variant(v.bits, v.experts_per_token or default_k, v.grammar).label() for v in variants]
    results.sort(key=lambda r: order.index(r["variant"]))
    counts = failures.pop("_counts", {})
    return {"suite": suite.name, "model": str(src), "backend": backend, "call_format": call_format,
            "cases": len(cases), "kl_reference": {"bits": ref_bits, "experts_per_token": ref_k,
                                                  "texts": len(texts), "positions": sum(map(len, texts))},
            "variants": results, "failure_counts": counts, "failures": failures}


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)
