"""Turn generated text into tool calls, for both formats, with precise failure categories.

    parse_tool_calls(text, call_format, tools, finished) -> ParseResult(calls, content, failure)

Works on constrained output (where it never fails) and on unconstrained output. Failure categories:
    no_call           no <tool_call> block in the text
    unparsable        a block is not in the call format (bad JSON, missing tags, ...)
    unknown_tool      the call names a tool that is not registered
    schema_violation  the arguments do not validate against the tool's JSON Schema (json_path says where)
    truncated         the text stops inside a call (or inside thinking) and `finished` is False (max tokens hit)
Calls before the first failure are still returned in `calls`. `content` is the text outside the calls with any
<think>...</think> block removed.

This is the format-independent part (thinking, `<tool_call>` blocks, validation with jsonschema); the body of each
block is read by its format's parse_body (formats/hermes.py, formats/qwen_xml.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fmoe.structured.formats import TOOL_CALL, TOOL_CALL_END, MalformedCall, format_module
from fmoe.structured.schema import parameters_by_name

CATEGORIES = ("no_call", "unparsable", "unknown_tool", "schema_violation", "truncated")


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class Failure:
    category: str
    message: str
    json_path: str | None = None


@dataclass
class ParseResult:
    calls: list[ToolCall] = field(default_factory=list)
    content: str = ""
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _strip_thinking(text: str) -> tuple[str, bool]:
    """Text without the thinking block; second value True if a thinking block is still open."""
    if "</think>" in text:
        return text.split("</think>", 1)[1], False
    if text.lstrip().startswith("<think>"):
        return "", True
    return text, False


def _json_path(err) -> str:
    path = "$"
    for p in err.absolute_path:
        path += f"[{p}]" if isinstance(p, int) else f".{p}"
    return path


def _validate(args: dict, schema: dict) -> Failure | None:
    import jsonschema

    try:
        cls = jsonschema.validators.validator_for(schema)
        v = cls(schema, format_checker=cls.FORMAT_CHECKER)
        errs = sorted(v.iter_errors(args), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    except Exception as e:  # e.g. unresolvable remote $ref
        return Failure("schema_violation", f"schema cannot be checked: {e}", "$")
    if errs:
        e = errs[0]
        return Failure("schema_violation", e.message, _json_path(e))
    return None


def parse_tool_calls(text: str, call_format: str, tools: list[dict], finished: bool = True) -> ParseResult:
    """Parse `text` (the generated assistant turn, with or without the end-of-turn token)."""
    parse_body = format_module(call_format).parse_body
    params_of = parameters_by_name(tools)
    body_text = text.replace("<|im_end|>", "").replace("<|endoftext|>", "")
    visible, open_think = _strip_thinking(body_text)
    res = ParseResult()
    if open_think:
        res.failure = (Failure("truncated", "output ends inside the thinking block") if not finished
                       else Failure("no_call", "thinking block never closed; no call"))
        return res
    first = visible.find(TOOL_CALL)
    if first < 0:
        res.content = visible.strip()
        res.failure = Failure("no_call", "no <tool_call> in the output")
        return res
    content_parts = [visible[:first]]
    pos = first
    while pos >= 0:
        start = pos + len(TOOL_CALL)
        end = visible.find(TOOL_CALL_END, start)
        if end < 0:
            if not finished:
                res.failure = Failure("truncated", f"output ends inside call #{len(res.calls) + 1}")
            else:
                res.failure = Failure("unparsable", f"call #{len(res.calls) + 1} has no </tool_call>")
            break
        body = visible[start:end].strip("\n")
        try:
            name, args = parse_body(body, params_of)
        except MalformedCall as e:
            res.failure = Failure("unparsable", f"call #{len(res.calls) + 1}: {e}")
            break
        if name not in params_of:
            res.failure = Failure("unknown_tool", f"call #{len(res.calls) + 1} names unknown tool {name!r}")
            break
        fail = _validate(args, params_of[name])
        if fail is not None:
            fail.message = f"call #{len(res.calls) + 1} to {name!r}: {fail.message}"
            res.failure = fail
            break
        res.calls.append(ToolCall(name, args))
        pos = visible.find(TOOL_CALL, end)
        content_parts.append(visible[end + len(TOOL_CALL_END): pos if pos >= 0 else len(visible)])
    res.content = "".join(content_parts).strip()
    return res
