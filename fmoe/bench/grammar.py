"""`fmoe bench grammar`: mask/compile cost of constrained tool calls, the JSONSchemaBench mask-bench table, and
the forced (fast-forward) fraction of real tool calls.

    fmoe bench grammar [--data DIR] [--vocab qwen3.5] [--json] [--maskbench] [--cap N] [--out DIR]

DIR holds JSONSchemaBench mask-bench cases, one ``<split>.jsonl`` per split (default ``$FMOE_MASKBENCH``, else
``tests/data/extdata/maskbench`` of the current directory: the subset shipped in a clone of fmoe). The committed
figures ran on every case of the 12 splits (github.com/guidance-ai/jsonschemabench, ``maskbench/data``).

The helpers here (maskbench cases, rendering an instance as a call, feeding it token by token, sampling under the
mask) are shared with tests/structured/test_maskbench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmoe.errors import FmoeError

SPLITS = ["BFCL_simple", "BFCL_multiple", "BFCL_parallel", "Glaiveai2K", "Github_trivial", "Github_easy",
          "Handwritten", "JME", "Synthesized", "MCPspec", "Snowplow", "WashingtonPost"]


DATA_DIR: Path | None = None   # set by --data; see data_dir()


def data_dir() -> Path:
    """The folder of mask-bench cases: --data, else $FMOE_MASKBENCH, else ./tests/data/extdata/maskbench."""
    p = DATA_DIR or Path(os.environ.get("FMOE_MASKBENCH") or Path("tests") / "data" / "extdata" / "maskbench")
    if not p.is_dir():
        raise FmoeError(f"JSONSchemaBench cases not found at {p}: pass --data DIR (a folder of <split>.jsonl) or "
                        "set FMOE_MASKBENCH (a clone of fmoe ships a subset in tests/data/extdata/maskbench)")
    return p


def load_split(name: str) -> list[dict]:
    path = data_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise FmoeError(f"{path}: no such split file (splits: {', '.join(SPLITS)})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -------------------------------------------------------------------------------------------- schema -> tool
def _rewrite_refs(node: Any) -> Any:
    """Local refs of a schema wrapped as the `value` parameter: #/$defs/.. and #/definitions/.. unchanged (hoisted),
    anything else (incl. "#") prefixed with #/properties/value."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#") and not (
                    v.startswith("#/$defs/") or v.startswith("#/definitions/")):
                out[k] = "#/properties/value" + v[1:]
            else:
                out[k] = _rewrite_refs(v)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def tool_for_schema(schema: Any, name: str = "f") -> tuple[dict, bool]:
    """(openai tool, wrapped). A schema with "type": "object" is the tool's parameters as is; any other schema
    becomes the single required parameter `value` (its local $refs rewritten to point inside it)."""
    if isinstance(schema, dict) and schema.get("type") == "object":
        params, wrapped = schema, False
    else:
        # $defs/definitions and $id/$schema move up to the wrapper: refs to them keep working (a nested $id would
        # change the base URI of the inner refs for jsonschema), other local refs point inside `value`.
        hoist = {k: schema[k] for k in ("$schema", "$defs", "definitions") if k in schema} if isinstance(schema, dict) else {}
        inner = schema
        if isinstance(schema, dict):
            # draft-04 spells $id "id": a string there is a base URI too, and would break the rewritten refs
            inner = {k: v for k, v in schema.items() if k not in ("$schema", "$id", "$defs", "definitions")
                     and k not in hoist and not (k == "id" and isinstance(v, str))}
            inner = _rewrite_refs(inner)
            hoist = {k: _rewrite_refs(v) for k, v in hoist.items()}
        params = {"type": "object", "properties": {"value": inner}, "required": ["value"],
                  "additionalProperties": False, **hoist}
        wrapped = True
    return {"type": "function", "function": {"name": name, "description": "", "parameters": params}}, wrapped


# ----------------------------------------------------------------------------------------- feed an instance
def feed_text(grammar, tok, text: str) -> bool:
    """Whether the grammar accepts `text` followed by end-of-turn, fed token by token."""
    ids = tok.encode(text, add_special_tokens=False).ids + [grammar.info.eos_id]
    m = grammar.matcher()
    return m.consume_many(ids) == len(ids) and m.is_done()


def call_text(tool: dict, args: Any, fmt: str) -> str | None:
    from fmoe.structured.formats import render_call

    f = tool["function"]
    if fmt == "xml" and not isinstance(args, dict):
        return None  # not expressible as a parameter list
    if fmt == "hermes":
        return ('<tool_call>\n{"name": ' + json.dumps(f["name"]) + ', "arguments": '
                + json.dumps(args, ensure_ascii=False) + "}\n</tool_call>")
    return render_call(f["name"], args, "xml", f["parameters"])


def expected_xml(tool: dict, text: str, args: Any, label: bool) -> bool | None:
    """Ground truth for XML: the dataset label when the XML text parses back to the same arguments; None when it
    does not (the instance is not expressible in XML: a raw string parameter given a non-string, e.g. 5 renders as
    the string "5"). Re-validating the parsed arguments instead was tried and gave wrong labels wherever
    jsonschema's format checker silently skips a format (date-time without rfc3339-validator)."""
    from fmoe.structured.parser import parse_tool_calls

    r = parse_tool_calls(text, "xml", [tool], finished=True)
    if r.calls and len(r.calls) == 1 and json.dumps(r.calls[0].arguments, sort_keys=True) == json.dumps(args, sort_keys=True):
        return label
    if r.failure is not None and r.failure.category == "schema_violation" and _same_args(text, tool, args):
        return label
    return None


def _same_args(text: str, tool: dict, args: Any) -> bool:
    """Whether the XML text parses (ignoring validation) back to `args`."""
    from fmoe.structured.formats.qwen_xml import parse_body

    body = text[len("<tool_call>\n"):-len("\n</tool_call>")]
    try:
        _, got = parse_body(body, {tool["function"]["name"]: tool["function"]["parameters"]})
    except Exception:
        return False
    return json.dumps(got, sort_keys=True) == json.dumps(args, sort_keys=True)


@dataclass
class SplitStats:
    split: str
    fmt: str
    backend: str = "llguidance"
    schemas: int = 0
    compiled: int = 0
    unsupported: int = 0
    errors: int = 0
    valid: int = 0
    valid_accepted: int = 0
    invalid: int = 0
    invalid_rejected: int = 0
    not_expressible: int = 0
    compile_ms: list = field(default_factory=list)
    unsupported_keywords: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)

    def row(self) -> dict:
        d = asdict(self)
        cm = d.pop("compile_ms")
        d["compile_ms_mean"] = round(statistics.mean(cm), 3) if cm else None
        d["failures"] = d["failures"][:20]
        return d


def run_maskbench_split(split: str, fmt: str, tok, *, cap_instances: int | None = None, backend: str = "llguidance",
                        max_schemas: int | None = None) -> SplitStats:
    from fmoe.structured.grammar import UnsupportedSchemaError, compile_tool_grammar

    st = SplitStats(split, fmt, backend)
    cases = load_split(split)
    if max_schemas is not None:
        cases = cases[:max_schemas]
    for case in cases:
        st.schemas += 1
        tool, wrapped = tool_for_schema(case["schema"])
        try:
            t0 = time.perf_counter()
            g = compile_tool_grammar([tool], fmt, tool_choice="required", parallel_calls=False, backend=backend,
                                     tokenizer=tok)
            st.compile_ms.append((time.perf_counter() - t0) * 1e3)
        except UnsupportedSchemaError as e:
            st.unsupported += 1
            st.unsupported_keywords[e.keyword] = st.unsupported_keywords.get(e.keyword, 0) + 1
            continue
        except Exception as e:  # a crash: counted, reported
            st.errors += 1
            st.failures.append({"id": case["id"], "kind": "compile_crash", "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        st.compiled += 1
        tests = case["tests"][:cap_instances] if cap_instances else case["tests"]
        for t in tests:
            args = {"value": t["data"]} if wrapped else t["data"]
            text = call_text(tool, args, fmt)
            label = bool(t["valid"])
            if text is None:
                st.not_expressible += 1
                continue
            if fmt == "xml":
                xl = expected_xml(tool, text, args, label)
                if xl is None:
                    st.not_expressible += 1
                    continue
                label = xl
            try:
                acc = feed_text(g, tok, text)
            except Exception as e:
                st.errors += 1
                st.failures.append({"id": case["id"], "kind": "feed_crash", "error": str(e)[:300]})
                continue
            if label:
                st.valid += 1
                st.valid_accepted += acc
                if not acc:
                    st.failures.append({"id": case["id"], "kind": "valid_rejected", "text": text[:300]})
            else:
                st.invalid += 1
                st.invalid_rejected += not acc
                if acc:
                    st.failures.append({"id": case["id"], "kind": "invalid_accepted", "text": text[:300]})
    return st


# ----------------------------------------------------------------------------------------- random sampling
def sample_under_mask(grammar, rng: np.random.Generator, *, max_tokens: int = 400, close_after: int = 40,
                      close_ids: list | None = None, use_forced: bool = True,
                      p_close: float = 0.85) -> tuple[list[int], bool, int]:
    """Random tokens under the mask, with a bias toward closing. Returns (ids, finished, n_forced).

    The first `close_after` sampled steps are uniform among the allowed ids (wide exploration of the grammar).
    After that, each step with probability `p_close` takes the first closer of `close_ids` whose first token the
    mask allows (a priority list of token sequences, most closing first: see close_token_ids; a sequence, once
    started, is continued while the mask allows its next token), otherwise a uniform allowed id. Every token is
    still checked against the mask, so whatever finishes is a sample of the grammar; the bias only makes unbounded
    strings/numbers/arrays end (uniform logits almost never pick the one closing token among ~248k allowed)."""
    m = grammar.matcher()
    ids: list[int] = []
    n_forced = 0
    steps = 0
    n = grammar.info.vocab_size
    seqs = [list(c) if isinstance(c, (list, tuple)) else [int(c)] for c in (close_ids or [])]
    firsts = np.asarray([c[0] for c in seqs], dtype=np.int64)
    pending: list[int] = []

    def allowed_bit(words, t: int) -> bool:
        return bool((int(words[t >> 5]) >> (t & 31)) & 1)

    def take(t: int) -> None:
        if not m.consume(t):
            raise AssertionError(f"allowed token {t} rejected: {m.error}")
        ids.append(t)

    while len(ids) < max_tokens and not m.is_done():
        if use_forced:
            ff = m.forced_tokens()
            if ff:
                for t in ff:
                    if not m.consume(t):
                        raise AssertionError(f"forced token {t} rejected: {m.error}")
                ids.extend(ff)
                n_forced += len(ff)
                pending = []
                continue
        words = m.mask()
        steps += 1
        if pending:
            t, pending = pending[0], pending[1:]
            if allowed_bit(words, t):
                take(t)
                continue
            pending = []
        if steps > close_after and firsts.size and rng.random() < p_close:
            ok = np.flatnonzero(((words[firsts >> 5] >> (firsts & 31)) & 1).astype(bool))
            if ok.size:
                seq = seqs[int(ok[0])]
                pending = seq[1:]
                take(seq[0])
                continue
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:n]
        allowed = np.flatnonzero(bits)
        if allowed.size == 0:
            raise AssertionError(f"empty mask (error={m.error})")
        take(int(rng.choice(allowed)))
    return ids, m.is_done(), n_forced


# Closers, most closing first (each a text that the sampler feeds token by token while the mask allows it):
#  * end of turn / of a call / of free text ("<tool_call>" is only allowed in free text, which it ends, and between
#    calls, where "<|im_end|>" wins);
#  * the XML raw-value delimiter: "\n" is never allowed inside compact JSON, so this only fires in raw XML values;
#  * quote closers before bare brackets: inside a JSON string "}}" is content, a quote is what ends it;
#  * brackets, minimal values (after "-", ":" ...), the XML end of function, and "\n" last.
_CLOSERS = ["<|im_end|>", "</tool_call>", "<tool_call>", "\n</parameter>\n", '"}}', '"}', '"]}', '"]', '"', "}}",
            "}", "]]", "]", "0", "1", "true", "null", "</function>", ","]


def close_token_ids(tok) -> list[list[int]]:
    """Priority list of closing token sequences for sample_under_mask (special tokens by id, texts tokenized)."""
    out: list[list[int]] = []
    for s in _CLOSERS:
        if s in ("<|im_end|>", "</tool_call>", "<tool_call>"):
            i = tok.token_to_id(s)
            if i is not None:
                out.append([i])
            continue
        ids = tok.encode(s, add_special_tokens=False).ids
        if ids and ids not in out:
            out.append(ids)
    return out


# ---------------------------------------------------------------------------------------------- timing bench
def _tools_from_bfcl(n: int) -> list[dict]:
    """n distinct realistic tools: BFCL function schemas from the maskbench BFCL_multiple split."""
    tools, seen = [], set()
    for split in ("BFCL_multiple", "BFCL_simple", "BFCL_parallel"):
        for case in load_split(split):
            for alt in case["schema"].get("anyOf", [case["schema"]]):
                props = alt.get("properties") or {}
                if len(props) != 1:
                    continue
                name, params = next(iter(props.items()))
                safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
                if safe in seen or not isinstance(params, dict) or params.get("type") != "object":
                    continue
                seen.add(safe)
                tools.append({"type": "function", "function": {"name": safe, "description": "", "parameters": params}})
                if len(tools) >= n:
                    return tools
    return tools


def _example_args(tool: dict) -> dict:
    """A valid argument object for a BFCL tool (ground truth from the maskbench instance when known)."""
    params = tool["function"]["parameters"]
    out = {}
    for k in params.get("required", []):
        s = params["properties"][k]
        t = s.get("type")
        if "enum" in s:
            out[k] = s["enum"][0]
        elif t == "integer":
            out[k] = 3
        elif t == "number":
            out[k] = 2.5
        elif t == "boolean":
            out[k] = True
        elif t == "array":
            it = (s.get("items") or {}).get("type")
            out[k] = [1, 2] if it in ("integer", "number") else ["alpha", "beta"]
        elif t == "object":
            out[k] = {}
        else:
            out[k] = "San Francisco, CA"
    return out


def _stand_in_forward(ms: float) -> None:
    """Work like an engine's forward pass for about ``ms`` milliseconds: torch matmuls (release the GIL inside the
    ops, hold it between them, as the model code does)."""
    import torch

    a = torch.randn(256, 256)
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)


def _time_our_path(tools, fmt, tok, rng, n_calls=20, overlap_ms: float | None = None) -> dict:
    """Per-token mask computation + application on real-size logits, over whole turns (text + calls).

    With ``overlap_ms`` the generator's order is reproduced: ``begin()`` (the next mask starts on the worker
    thread), a stand-in forward pass of that many ms, the logits written (as the lm_head does last), then the timed
    ``process()`` — the cost a step still sees."""
    import torch

    from fmoe.structured.formats import render_calls
    from fmoe.structured.processor import ToolCallProcessor
    from fmoe.structured.grammar import compile_tool_grammar

    t0 = time.perf_counter()
    g = compile_tool_grammar(tools, fmt, tokenizer=tok)
    compile_ms = (time.perf_counter() - t0) * 1e3
    times, call_times = [], []
    forced_tok = call_tok = 0
    logits = torch.zeros(g.vocab_size, dtype=torch.float32)
    for i in range(n_calls):
        picks = [tools[int(j)] for j in rng.choice(len(tools), size=1 + (i % 2), replace=False)]
        calls = [(t["function"]["name"], _example_args(t)) for t in picks]
        text = "I will call the tools now.\n\n" + render_calls(calls, fmt, tools)
        ids = tok.encode(text, add_special_tokens=False).ids + [g.info.eos_id]
        proc = ToolCallProcessor(g)
        k = 0
        while k < len(ids):
            ff = proc.forced()
            if ff:
                assert ids[k:k + len(ff)] == ff or True
                # the reference text may tokenize differently from the forced run: follow the text, counting the
                # tokens covered by forced runs (they cost no mask)
                if ids[k:k + len(ff)] == ff:
                    for t in ff:
                        proc.accept(t)
                    k += len(ff)
                    forced_tok += len(ff)
                    call_tok += len(ff)
                    continue
            in_call = proc.matcher.in_call_region()
            if overlap_ms:
                proc.begin()
                _stand_in_forward(overlap_ms)
            logits.normal_()  # the logits are written last (the engine's lm_head), then masked
            t1 = time.perf_counter()
            out = proc.process(logits)
            dt = time.perf_counter() - t1
            assert torch.isfinite(out[ids[k]])
            times.append(dt)
            if in_call or ids[k] == g.info.tool_call_id:
                call_times.append(dt)
                call_tok += 1
            proc.accept(ids[k])
            k += 1
        assert proc.done()
    return {"compile_ms": compile_ms, "mask_ms_mean": 1e3 * statistics.mean(times),
            "mask_ms_p99": 1e3 * float(np.percentile(times, 99)),
            "call_mask_ms_mean": 1e3 * statistics.mean(call_times),
            "call_mask_ms_p99": 1e3 * float(np.percentile(call_times, 99)),
            "forced_fraction": forced_tok / max(1, call_tok), "call_tokens": call_tok, "steps_timed": len(times)}


def _peer_llguidance(schemas, tok_info, instances) -> dict:
    import llguidance

    ll = tok_info.llg()
    comp, masks = [], []
    buf = np.zeros(tok_info.n_words, dtype=np.int32)
    for sch, inst in zip(schemas, instances):
        t0 = time.perf_counter()
        m = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_json_schema(sch), log_level=0)
        comp.append(time.perf_counter() - t0)
        ids = tok_info.hf.encode(json.dumps(inst), add_special_tokens=False).ids
        for t in ids:
            t1 = time.perf_counter()
            m.unsafe_compute_mask_ptr(buf.ctypes.data, buf.nbytes)
            masks.append(time.perf_counter() - t1)
            if not m.consume_token(t):
                break
    return _summ(comp, masks)


def _summ(comp, masks) -> dict:
    return {"compile_ms": 1e3 * statistics.mean(comp), "mask_ms_mean": 1e3 * statistics.mean(masks),
            "mask_ms_p99": 1e3 * float(np.percentile(masks, 99)), "n_schemas": len(comp), "n_masks": len(masks)}


def _peer_outlines(schemas, tok_info, instances, budget_s: float) -> dict:
    from fmoe.structured.grammar_outlines import outlines_vocabulary

    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    voc = outlines_vocabulary(tok_info)
    comp, masks = [], []
    t_start = time.perf_counter()
    buf = np.zeros(tok_info.n_words, dtype=np.int32)
    for sch, inst in zip(schemas, instances):
        if time.perf_counter() - t_start > budget_s:
            break
        t0 = time.perf_counter()
        try:
            idx = outlines_core.Index(build_regex_from_schema(json.dumps(sch), None), voc)
        except Exception:
            continue
        comp.append(time.perf_counter() - t0)
        guide = outlines_core.Guide(idx)
        ids = tok_info.hf.encode(json.dumps(inst, separators=(",", ":")), add_special_tokens=False).ids
        for t in ids:
            t1 = time.perf_counter()
            guide.write_mask_into(buf.ctypes.data, buf.size, 4)
            masks.append(time.perf_counter() - t1)
            try:
                guide.advance(t, return_tokens=False)
            except Exception:
                break
    return _summ(comp, masks) if comp else {"error": "nothing compiled in budget"}


def _peer_xgrammar(schemas, tok_info, instances) -> dict:
    try:
        import torch
        import xgrammar as xgr
    except Exception as e:  # pragma: no cover - optional peer
        return {"skipped": f"xgrammar not importable: {type(e).__name__}"}
    enc = [tok_info.hf.id_to_token(i) for i in range(tok_info.n_tokens)]
    info = xgr.TokenizerInfo.from_huggingface  # noqa: F841  (API presence check)
    ti = xgr.TokenizerInfo(enc, vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=tok_info.vocab_size,
                           stop_token_ids=[tok_info.eos_id])
    compiler = xgr.GrammarCompiler(ti)
    bm = xgr.allocate_token_bitmask(1, tok_info.vocab_size)
    comp, masks = [], []
    for sch, inst in zip(schemas, instances):
        t0 = time.perf_counter()
        try:
            cg = compiler.compile_json_schema(json.dumps(sch))
        except Exception:
            continue
        comp.append(time.perf_counter() - t0)
        m = xgr.GrammarMatcher(cg)
        for t in tok_info.hf.encode(json.dumps(inst), add_special_tokens=False).ids:
            t1 = time.perf_counter()
            m.fill_next_token_bitmask(bm)
            masks.append(time.perf_counter() - t1)
            if not m.accept_token(t):
                break
    _ = torch
    return _summ(comp, masks) if comp else {"error": "nothing compiled"}


def _expert_bytes_model(n_tokens: int, n_forced_runs: int, forced_tokens: int) -> dict:
    """Expert reads per call for a streaming MoE (Qwen3.5-35B-A3B-like: 40 layers, 256 experts, top-8, 4-bit):
    one decode step reads top-k experts per layer; a batched pass of r tokens reads the union of their experts
    (estimated with uniform routing: E*(1-(1-k/E)^r))."""
    layers, E, k = 40, 256, 8
    expert_bytes = 3 * 2048 * 512 * 0.5 + 3 * 2048 * 512 / 64 * 4  # gate/up/down 4-bit + scales/biases
    per_step = layers * k * expert_bytes
    sampled = n_tokens - forced_tokens
    avg_run = forced_tokens / max(1, n_forced_runs)
    union = E * (1 - (1 - k / E) ** avg_run) if n_forced_runs else 0
    with_ff = sampled * per_step + n_forced_runs * layers * union * expert_bytes
    return {"expert_bytes_per_call_no_ff": n_tokens * per_step, "expert_bytes_per_call_ff": with_ff,
            "forward_passes_no_ff": n_tokens, "forward_passes_ff": sampled + n_forced_runs}


def forced_fraction_real_calls(tok, fmt: str, n: int = 100) -> dict:
    """Forced fraction on real calls: BFCL ground-truth calls (maskbench BFCL_* valid instances) rendered in `fmt`
    and replayed through the grammar, taking every forced run the grammar offers."""
    from fmoe.structured.grammar import UnsupportedSchemaError, compile_tool_grammar

    tot = forced = runs = calls = 0
    t_ff = t_noff = 0.0
    for case in load_split("BFCL_simple")[:n]:
        tool, wrapped = tool_for_schema(case["schema"])
        try:
            g = compile_tool_grammar([tool], fmt, tool_choice="required", tokenizer=tok)
        except UnsupportedSchemaError:
            continue
        for t in case["tests"][:1]:
            text = call_text(tool, {"value": t["data"]} if wrapped else t["data"], fmt)
            if text is None:
                continue
            ids = tok.encode(text, add_special_tokens=False).ids + [g.info.eos_id]
            m = g.matcher()
            k = 0
            t0 = time.perf_counter()
            while k < len(ids):
                ff = m.forced_tokens()
                if ff and ids[k:k + len(ff)] == ff:
                    m.consume_many(ff)
                    k += len(ff)
                    forced += len(ff)
                    runs += 1
                    continue
                m.mask()
                m.consume(ids[k])
                k += 1
            t_ff += time.perf_counter() - t0
            tot += len(ids)
            calls += 1
    return {"format": fmt, "calls": calls, "call_tokens": tot, "forced_tokens": forced, "forced_runs": runs,
            "forced_fraction": forced / max(1, tot), "tokens_per_call": tot / max(1, calls),
            **_expert_bytes_model(tot / max(1, calls), runs / max(1, calls), forced / max(1, calls))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fmoe bench grammar")
    ap.add_argument("--data", default=None, help="folder of JSONSchemaBench <split>.jsonl files (see above)")
    ap.add_argument("--vocab", default="qwen3.5", choices=["qwen3.5"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--maskbench", action="store_true", help="also run the full mask-bench table (minutes)")
    ap.add_argument("--cap", type=int, default=None, help="max instances per schema for --maskbench")
    ap.add_argument("--outlines-budget", type=float, default=120.0, help="seconds for the outlines-core peer")
    ap.add_argument("--out", default=None, help="write grammar.json/.md (and maskbench.json/.md) here")
    a = ap.parse_args(argv)
    global DATA_DIR
    DATA_DIR = Path(a.data) if a.data else None

    from fmoe.structured.grammar import tokenizer_info
    from fmoe.structured.qwen_vocab import qwen35_tokenizer

    tok = qwen35_tokenizer()
    info = tokenizer_info(tok)
    info.llg()
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"vocab": a.vocab, "vocab_size": info.vocab_size}
    tools20 = _tools_from_bfcl(20)
    for fmt in ("hermes", "xml"):
        res[f"ours_{fmt}_5tools"] = _time_our_path(tools20[:5], fmt, tok, rng)
        res[f"ours_{fmt}_20tools"] = _time_our_path(tools20, fmt, tok, rng, n_calls=10)
        res[f"ours_{fmt}_5tools_overlapped_5ms"] = _time_our_path(tools20[:5], fmt, tok, rng, overlap_ms=5.0)
        res[f"forced_{fmt}"] = forced_fraction_real_calls(tok, fmt)
    schemas = [t["function"]["parameters"] for t in tools20]
    insts = [_example_args(t) for t in tools20]
    res["peer_llguidance"] = _peer_llguidance(schemas, info, insts)
    res["peer_outlines_core"] = _peer_outlines(schemas[:5], info, insts[:5], a.outlines_budget)
    res["peer_xgrammar"] = _peer_xgrammar(schemas, info, insts)
    if a.maskbench:
        table = []
        for split in SPLITS:
            for fmt in ("hermes", "xml"):
                st = run_maskbench_split(split, fmt, tok, cap_instances=a.cap)
                table.append(st.row())
                print(f"{split:16s} {fmt:6s} compiled {st.compiled}/{st.schemas} unsupported {st.unsupported} "
                      f"errors {st.errors} valid {st.valid_accepted}/{st.valid} invalid rejected "
                      f"{st.invalid_rejected}/{st.invalid}", file=sys.stderr)
        res["maskbench"] = table
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        mb = res.pop("maskbench", None)
        (out / "grammar.json").write_text(json.dumps(res, indent=1))
        if mb is not None:
            (out / "maskbench.json").write_text(json.dumps(mb, indent=1))
            (out / "maskbench.md").write_text(maskbench_markdown(mb))
            res["maskbench"] = mb
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            if isinstance(v, dict):
                keys = [x for x in ("compile_ms", "mask_ms_mean", "mask_ms_p99", "call_mask_ms_mean",
                                    "call_mask_ms_p99", "forced_fraction", "skipped", "error") if x in v]
                print(f"{k:24s} " + "  ".join(f"{x}={v[x]:.4g}" if isinstance(v[x], float) else f"{x}={v[x]}"
                                              for x in keys))
    return 0


def maskbench_markdown(rows: list[dict]) -> str:
    lines = ["| split | format | schemas | compiled | unsupported | errors | valid accepted | invalid rejected | "
             "not expressible | compile ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['fmt']} | {r['schemas']} | {r['compiled']} | {r['unsupported']} | "
                     f"{r['errors']} | {r['valid_accepted']}/{r['valid']} | {r['invalid_rejected']}/{r['invalid']} | "
                     f"{r['not_expressible']} | {r['compile_ms_mean']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
