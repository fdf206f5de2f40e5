"""Issue #16 items 1-3: a started call always completes validly within max_call_tokens (the closing path and
ToolCallProcessor's budget), tool_choice required/named forces the call at once, unsupported keywords are refused
at load. Real schemas: the JSONSchemaBench subset in tests/data/extdata/maskbench, Qwen3.5 vocabulary."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fmoe.bench.grammar import SPLITS, load_split, tool_for_schema
from fmoe.engine.generate import Generation, Sampling
from fmoe.engine.stats import EngineStats
from fmoe.structured.closing import closer_for
from fmoe.structured.grammar import GrammarError, UnsupportedSchemaError, compile_tool_grammar, schema_grammar_check
from fmoe.structured.parser import parse_tool_calls
from fmoe.structured.processor import ToolCallProcessor

DATA = Path(__file__).resolve().parents[1] / "data" / "extdata" / "maskbench"


def _schemas(per_split: int):
    out = []
    for split in SPLITS:
        if not (DATA / f"{split}.jsonl").exists():
            continue
        for case in load_split(split)[:per_split]:
            out.append((split, case["schema"]))
    return out


def _compile(tool, fmt, tok, **kw):
    try:
        return compile_tool_grammar([tool], fmt, tokenizer=tok, **kw)
    except UnsupportedSchemaError:
        return None


@pytest.mark.parametrize("fmt", ["hermes", "xml"])
def test_closing_path_completes_every_state(tok, fmt):
    """From random states of real schemas' call regions, the closing path is accepted token by token and the text
    parses into calls that validate."""
    rng = np.random.default_rng(5)
    done = 0
    for split, schema in _schemas(4):
        tool, _ = tool_for_schema(schema)
        g = _compile(tool, fmt, tok, tool_choice="required", max_calls=2)
        if g is None:
            continue
        info = g.info
        for _ in range(2):
            m = g.matcher()
            ids = [info.tool_call_id]
            m.consume(info.tool_call_id)
            for _ in range(int(rng.integers(0, 50))):
                if m.is_done():
                    break
                bits = np.unpackbits(m.mask().view(np.uint8), bitorder="little")[: info.vocab_size]
                allowed = np.flatnonzero(bits)
                allowed = allowed[allowed != info.eos_id]
                if not allowed.size:
                    break
                t = int(rng.choice(allowed))
                assert m.consume(t)
                ids.append(t)
                for f in m.forced_tokens():
                    assert m.consume(f)
                    ids.append(f)
            if m.is_done():
                continue
            path = closer_for(info).path(m.region.m, limit=512)
            assert path is not None, (split, tok.decode(ids))
            for t in path:
                assert m.consume(t), (split, tok.decode(ids + path))
            assert m.is_done()
            text = tok.decode(ids + [t for t in path if t != info.eos_id], skip_special_tokens=False)
            res = parse_tool_calls(text, fmt, [tool], finished=True)
            assert res.failure is None and res.calls, (split, res.failure, text)
            done += 1
    assert done >= 40


# ---------------------------------------------------------------------------------------------- generation
class _Cache:
    def __init__(self):
        self.tokens: list[int] = []

    def snapshot(self):
        c = _Cache()
        c.tokens = list(self.tokens)
        return c


class RandomModel:
    """Logits from a seeded generator, with a bias toward long strings: a model that never wants to stop."""

    def __init__(self, vocab: int, seed: int = 0, boost: list[int] = ()):
        self.cfg = SimpleNamespace(vocab_size=vocab, max_position_embeddings=1 << 20)
        self.ops = SimpleNamespace(to_numpy=lambda x: x)
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.boost = list(boost)

    def new_cache(self):
        return _Cache()

    def stats(self):
        return EngineStats()

    def forward(self, ids, cache, all_logits=False):
        cache.tokens.extend(ids)
        x = self.rng.standard_normal(self.vocab).astype(np.float32)
        x[self.boost] += 3.0
        return x


def _generate(tok, g, max_tokens, max_call_tokens, seed=0):
    boost = [tok.token_to_id(c) for c in ("a", "b", "1", "2") if tok.token_to_id(c) is not None]
    model = RandomModel(g.info.vocab_size, seed, boost)
    proc = ToolCallProcessor(g, max_call_tokens=max_call_tokens)
    gen = Generation(model, [1, 2, 3], max_tokens=max_tokens, sampling=Sampling(temperature=0),
                     stop_ids=[g.info.eos_id], processors=[proc])
    ids = [s.token_id for s in gen]
    return ids, gen, proc


@pytest.mark.parametrize("fmt", ["hermes", "xml"])
def test_started_call_completes_past_max_tokens(tok, fmt):
    """A call started near max_tokens runs past it and ends valid; with a small max_call_tokens the grammar steers
    it closed in time (closed_early). Before: finish_reason "length", the call cut (parse failure "truncated")."""
    n = steered = 0
    for split, schema in _schemas(3):
        tool, _ = tool_for_schema(schema)
        g = _compile(tool, fmt, tok, tool_choice={"name": "f"}, parallel_calls=False)
        if g is None:
            continue
        need = max(g.min_call_tokens().values())
        budget = need + 12
        ids, gen, proc = _generate(tok, g, max_tokens=6, max_call_tokens=budget, seed=n)
        text = tok.decode([t for t in ids if t != g.info.eos_id], skip_special_tokens=False)
        assert gen.stats.finish_reason in ("stop", "grammar"), (split, gen.stats.finish_reason, text)
        assert len(ids) <= budget + 1
        res = parse_tool_calls(text, fmt, [tool], finished=True)
        assert res.failure is None and len(res.calls) == 1, (split, res.failure, text)
        assert text.startswith("<tool_call>")        # named tool_choice: the call at once, no text first
        steered += proc.closed_early
        n += 1
    assert n >= 20 and steered >= n // 2


def test_call_budget_below_schema_minimum_is_refused_up_front(tok):
    tool = {"type": "function", "function": {"name": "many", "parameters": {
        "type": "object", "required": ["xs"], "properties": {"xs": {
            "type": "array", "minItems": 40, "items": {"type": "object", "required": ["k"],
                                                        "properties": {"k": {"type": "integer"}}}}}}}}
    g = compile_tool_grammar([tool], "hermes", tool_choice="required", tokenizer=tok)
    need = g.min_call_tokens()["many"]
    assert need > 200
    with pytest.raises(GrammarError, match=rf"'many'.*{need} tokens.*max_call_tokens=64"):
        ToolCallProcessor(g, max_call_tokens=64)
    ToolCallProcessor(g, max_call_tokens=need)


@pytest.mark.parametrize("fmt", ["hermes", "xml"])
@pytest.mark.parametrize("choice", ["required", {"name": "f"}])
def test_forced_choice_allows_only_the_call(tok, fmt, choice):
    tool, _ = tool_for_schema({"type": "object", "properties": {"q": {"type": "string"}}})
    g = compile_tool_grammar([tool], fmt, tool_choice=choice, tokenizer=tok)
    bits = np.unpackbits(g.matcher().mask().view(np.uint8), bitorder="little")
    assert list(np.flatnonzero(bits)) == [g.info.tool_call_id]
    g = compile_tool_grammar([tool], fmt, tool_choice=choice, thinking=True, tokenizer=tok)
    m = g.matcher()
    assert m.consume_many(tok.encode("let me think</think>", add_special_tokens=False).ids) > 0
    m2 = g.matcher()
    think = tok.encode("let me think", add_special_tokens=False).ids + [g.info.think_end_id]
    assert m2.consume_many(think) == len(think)
    bits = np.unpackbits(m2.mask().view(np.uint8), bitorder="little")
    assert list(np.flatnonzero(bits)) == [g.info.tool_call_id]


def test_schema_check_without_tokenizer_names_tool_and_keyword():
    bad = [{"type": "function", "function": {"name": "weird", "parameters": {
        "type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}}}}]
    with pytest.raises(UnsupportedSchemaError) as ei:
        schema_grammar_check(bad)
    assert ei.value.tool == "weird" and ei.value.keyword == "uniqueItems"
    xml_only = [{"type": "function", "function": {"name": "pp", "parameters": {
        "type": "object", "anyOf": [{"required": ["a"]}], "properties": {"a": {"type": "string"}}}}}]
    schema_grammar_check(xml_only)                   # fine as JSON (Hermes)
    with pytest.raises(UnsupportedSchemaError) as ei:
        schema_grammar_check(xml_only, "xml")
    assert ei.value.tool == "pp" and ei.value.keyword == "anyOf"
