"""The demo model's data generator and tokenizer (issue 6): determinism, splits, rendering, round trips."""
from __future__ import annotations

import json

import pytest

from fmoe.demo import MODEL_DIR
from training import HELDOUT_PATH, datagen


@pytest.fixture(scope="module")
def schemas():
    return datagen.tool_schemas()


@pytest.fixture(scope="module")
def template():
    return datagen.load_template()


def test_generator_is_deterministic_for_a_seed():
    a = datagen.generate(7, "train", 12)
    b = datagen.generate(7, "train", 12)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = datagen.generate(8, "train", 12)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)
    # example i depends only on (seed, split, i), not on how the range is cut
    assert datagen.generate(7, "train", 4, start=8) == a[8:]


def test_schemas_are_the_real_tools(schemas):
    from fmoe.tools.demo import convert_units, get_weather

    assert set(schemas) == set(datagen.TOOL_NAMES)
    assert schemas["get_weather"] == get_weather.openai_schema()
    assert schemas["convert_units"] == convert_units.openai_schema()
    from fmoe.tools.builtin_calculator import calculator

    assert schemas["calculator"] == calculator.openai_schema()


def test_all_kinds_and_valid_structure(schemas):
    recs = datagen.generate(1234, "train", 150)
    assert {r["kind"] for r in recs} == set(datagen.KINDS)
    for r in recs:
        assert set(r["tools"]) <= set(schemas)
        needed = {c["name"] for step in r["expected"] for c in step}
        assert needed <= set(r["tools"]), r["id"]
        assert r["check"]
        final = r["messages"][-1]
        assert final["role"] == "assistant" and not final.get("tool_calls")
        for ch in r["check"]:
            assert ch in final["content"], (r["id"], ch, final["content"])


def test_heldout_entities_and_values_disjoint_from_train():
    for pool in ("word", "name", "city", "unknown_city", "tz", "item"):
        assert not set(datagen.pools("train")[pool]) & set(datagen.pools("heldout")[pool])
        assert datagen.pools("heldout")[pool]
    g_tr, g_ho = datagen.Gen(1, "train", 0), datagen.Gen(1, "heldout", 0)
    tr = {str(g_tr.number_for_operand()) for _ in range(300)}
    ho = {str(g_ho.number_for_operand()) for _ in range(300)}
    assert not tr & ho


def test_render_matches_template_and_spans(schemas, template):
    recs = datagen.generate(3, "train", 40)
    for r in recs:
        text = datagen.render(r, schemas, template)
        assert text.startswith("<|im_start|>")
        spans = datagen.assistant_spans(text)
        n_assistant = sum(1 for m in r["messages"] if m["role"] == "assistant")
        assert len(spans) == n_assistant
        for s, e in spans:
            assert text[e - len("<|im_end|>"):e] == "<|im_end|>"
            assert "<|im_start|>" not in text[s:e]
        if r["tools"]:
            assert "# Tools" in text
            for n in r["tools"]:
                assert json.dumps(schemas[n], ensure_ascii=False) in text


def test_shipped_heldout_is_current():
    """training/heldout.jsonl is exactly what the generator makes for the held-out split."""
    shipped = datagen.read_jsonl(HELDOUT_PATH)
    fresh = datagen.generate(datagen.DEFAULT_SEED, "heldout", 10)
    assert json.dumps(shipped[:10], sort_keys=True) == json.dumps(fresh, sort_keys=True)


def test_tokenizer_round_trips(schemas, template):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    specials = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                "<think>", "</think>", "<|endoftext|>"]
    for s in specials:
        i = tok.token_to_id(s)
        assert i is not None
        assert tok.encode(s, add_special_tokens=False).ids == [i]
    for r in datagen.generate(5, "heldout", 10):
        text = datagen.render(r, schemas, template)
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text
    for s in ["12345.678", "Zürich São Paulo 北京", "a\tb\n\n  c", "emoji 🙂 done"]:
        assert tok.decode(tok.encode(s, add_special_tokens=False).ids) == s
    # digits are single tokens, so the model copies numbers digit by digit
    enc = tok.encode("value 90210", add_special_tokens=False)
    assert [t for t in enc.tokens if t.strip("Ġ").isdigit()] == list("90210")


def test_tokenizer_config_has_the_chat_template():
    cfg = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == (MODEL_DIR / "chat_template.jinja").read_text()
    assert cfg["eos_token"] == "<|im_end|>"


def test_v3_vocab_entities_cover_the_vocabulary_and_avoid_heldout():
    """demo-data-v3: invented training entities are joined from the tokenizer's letter pieces (so every piece is
    seen as something to copy) and never name or contain a held-out entity."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    starts, conts = datagen.vocab_pieces()
    assert set(starts) <= set(conts) and len(starts) > 200 and len(conts) > 500
    g = datagen.Gen(1234, "train", 0)
    seen, pieces = set(), set()
    for pool in ("word", "name", "unknown_city"):
        for _ in range(1500):
            w = g.vocab_entity(pool)
            assert not datagen._touches_heldout(w), w
            seen.add(w.lower())
            for text in (" " + w, "\n" + w):  # as written in a request and as an XML argument
                pieces.update(t.lstrip("Ġ") for t in tok.encode(text, add_special_tokens=False).tokens)
    held = {x.lower() for p in datagen.pools("heldout").values() for x in p}
    assert not seen & held
    # 4,500 invented entities exercise nearly every letter piece of the vocabulary
    assert len(pieces & set(conts)) >= 0.95 * len(conts)


def test_v3_missing_tool_is_conditioned_on_the_tools_block():
    """Training apologies for a missing tool use the positive family's phrasing, and the tool is never offered."""
    recs = datagen.generate(1234, "train", 200)
    missing = [r for r in recs if r["messages"][-1]["content"].startswith("Sorry, I don't have a tool to")]
    assert len(missing) >= 5
    by_what = {v: k for k, v in datagen.MISSING_TOOL_WHAT.items()}
    for r in missing:
        what = r["messages"][-1]["content"][len("Sorry, I don't have a tool to "):-len(" here.")]
        assert by_what[what] not in r["tools"], r["id"]
    # the held-out split is generated exactly as in demo-data-v2
    assert datagen.HELDOUT_STREAM == "demo-data-v2"


def test_v4_weather_successes_on_invented_cities():
    """Training get_weather calls succeed on invented cities too (copied from the request, answered from the real
    tool with the record's extended table); the real table is left as it was."""
    import json

    from fmoe.tools.demo import WEATHER

    from training import datagen

    before = dict(WEATHER)
    invented = 0
    for i in range(200):
        r = datagen.make_example(datagen.DEFAULT_SEED, "train", i)
        user_text = " ".join(m["content"] for m in r["messages"] if m["role"] == "user")
        for m in r["messages"]:
            if m["role"] == "tool" and m["name"] == "get_weather" and m["content"].startswith("{"):
                d = json.loads(m["content"])
                assert set(d) == {"city", "temperature", "unit", "condition"}
                if d["city"] not in WEATHER:
                    invented += 1
                    assert d["city"] in user_text
                    assert not datagen._touches_heldout(d["city"])
    assert invented >= 8
    assert WEATHER == before
