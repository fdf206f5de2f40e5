"""Parser for both call formats, on constrained and unconstrained output, with failure categories."""

from fmoe.structured.formats import render_calls
from fmoe.structured.parser import parse_tool_calls

T = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1},
                                     "opts": {"type": "object", "properties": {"deep": {"type": "boolean"}}}},
    "required": ["city"]}}}]


def cat(text, fmt, finished=True):
    r = parse_tool_calls(text, fmt, T, finished)
    return r.failure.category if r.failure else None


def test_ok_both_formats_and_content():
    for fmt in ("hermes", "xml"):
        calls = [("get_weather", {"city": "Oslo", "days": 2, "opts": {"deep": True}}), ("get_weather", {"city": "Rome"})]
        text = "<think>\nplan\n</think>\n\nChecking.\n\n" + render_calls(calls, fmt, T) + "<|im_end|>"
        r = parse_tool_calls(text, fmt, T, True)
        assert r.failure is None
        assert [(c.name, c.arguments) for c in r.calls] == calls
        assert r.content == "Checking."


def test_failure_categories_hermes():
    assert cat("Just an answer.", "hermes") == "no_call"
    assert cat('<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>', "hermes") == "unparsable"
    assert cat('<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>', "hermes") == "unknown_tool"
    r = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "A", "opts": {"deep": 1}}}\n'
                         '</tool_call>', "hermes", T, True)
    assert r.failure.category == "schema_violation" and r.failure.json_path == "$.opts.deep"
    assert cat('<tool_call>\n{"name": "get_weather", "arguments": {"ci', "hermes", finished=False) == "truncated"
    assert cat('<tool_call>\n{"name": "get_weather", "arguments": {"ci', "hermes", finished=True) == "unparsable"
    assert cat("<think>\nstill thinking", "hermes", finished=False) == "truncated"


def test_failure_categories_xml():
    assert cat("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</function>\n</tool_call>", "xml") == "unparsable"
    assert cat("<tool_call>\n<function=zzz>\n</function>\n</tool_call>", "xml") == "unknown_tool"
    r = parse_tool_calls("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
                         "<parameter=days>\n0\n</parameter>\n</function>\n</tool_call>", "xml", T, True)
    assert r.failure.category == "schema_violation" and r.failure.json_path == "$.days"
    assert cat("<tool_call>\n<function=get_weather>\n</function>\n</tool_call>", "xml") == "schema_violation"
    assert cat("<tool_call>\n<function=get_weather>\n<parameter=city>\nOs", "xml", finished=False) == "truncated"
    # Python-style booleans rendered by the official template's |string filter are read leniently
    r = parse_tool_calls("<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n"
                         "<parameter=opts>\n{\"deep\": true}\n</parameter>\n</function>\n</tool_call>", "xml", T, True)
    assert r.failure is None and r.calls[0].arguments == {"city": "42", "opts": {"deep": True}}
