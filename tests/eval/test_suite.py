"""Suite files: validation errors name the file, the line and the field; the built-in suite loads."""
import pytest

from fmoe.eval.suite import SuiteError, loads_suite, resolve_suite

GOOD = """\
name: s
tools:
  pick:
    name: pick
    parameters: {type: object, properties: {x: {type: integer}}, required: [x]}
cases:
  - id: a
    tools: [pick, calculator]
    messages: [{role: user, content: hi}]
    expect: {calls: [[{name: pick, arguments: {x: 1}}]], answer: "1"}
"""


def test_good_suite():
    s = loads_suite(GOOD, name="s.yaml")
    c = s.cases[0]
    assert [t["function"]["name"] for t in s.tool_schemas(c)] == ["pick", "calculator"]
    assert c.expect.answer == ["1"]


@pytest.mark.parametrize("text,where", [
    (GOOD.replace("    messages:", "    mesages:"), "s.yaml:9: field 'cases[0].mesages': unknown field"),
    (GOOD.replace("role: user", "role: robot"), "s.yaml:9: field 'cases[0].messages[0].role'"),
    (GOOD.replace("tools: [pick, calculator]", "tools: [pick, nosuch]"),
     "s.yaml:8: field 'cases[0].tools[1]': unknown tool 'nosuch'"),
    (GOOD.replace("  - id: a\n", "  - kind: x\n"), "s.yaml:7: field 'cases[0].id': required field is missing"),
    (GOOD.replace("name: s\n", "name: s\nmax_tokens: -3\n"), "s.yaml:2: field 'max_tokens'"),
    (GOOD + "  - id: a\n    messages: [{role: user, content: x}]\n", "duplicate case id 'a'"),
    ("name: s\ncases: [\n  {id: 1\nfoo: 2\n", "s.yaml:4: YAML syntax error"),
])
def test_suite_errors(text, where):
    with pytest.raises(SuiteError) as e:
        loads_suite(text, name="s.yaml")
    assert where in str(e.value)


def test_builtin_heldout_suite():
    s = resolve_suite("demo-heldout")
    assert len(s.cases) >= 100 and s.loop
    kinds = {c.kind for c in s.cases}
    assert {"single", "parallel", "no_tool"} <= kinds
    for c in s.cases[:20]:
        assert c.messages[-1].role == "user"
        s.tool_schemas(c)


def test_unknown_suite():
    with pytest.raises(SuiteError):
        resolve_suite("no-such-suite")


def test_resolve_bfcl_spec_per_split():
    """``bfcl:DIR[:split,...]`` parsed once (here), with per_split (fmoe eval --per-split)."""
    from pathlib import Path

    bfcl = Path(__file__).resolve().parents[1] / "data" / "extdata" / "bfcl"
    s = resolve_suite(f"bfcl:{bfcl}:simple_python,irrelevance", per_split=3)
    assert len(s.cases) == 6
    assert len(resolve_suite(f"bfcl:{bfcl}:simple_python").cases) > 3   # no per_split: every case of the split
