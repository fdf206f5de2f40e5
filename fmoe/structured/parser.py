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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from fmoe.structured.call_format import PARAM_END, is_plain_string_schema, tool_function, tool_parameters

TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
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


class _Unparsable(ValueError):
    pass


def _strip_thinking(text: str) -> tuple[str, bool]:
    """Text without the thinking block; second value True if a thinking block is still open."""
    if "</think>" in text:
        return text.split("</think>", 1)[1], False
    if text.lstrip().startswith("<think>"):
        return "", True
    return text, False


def _parse_hermes(body: str) -> tuple[str, dict]:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise _Unparsable(f"call is not valid JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise _Unparsable('call JSON must be an object with a string "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models emit arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise _Unparsable('"arguments" is a string that is not JSON') from None
    if not isinstance(args, dict):
        raise _Unparsable('"arguments" must be a JSON object')
    return obj["name"], args


_FUNC = re.compile(r"<function=([^>\n]+)>\n?")


def _xml_value(raw: str, schema: Any, root: dict) -> Any:
    if schema is not None and is_plain_string_schema(schema, root):
        return raw
    s = raw.strip()
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        pass
    lenient = {"True": True, "False": False, "None": None}  # the official template renders Python str() of these
    if s in lenient:
        return lenient[s]
    return raw


def _parse_xml(body: str, params_of: dict[str, dict]) -> tuple[str, dict]:
    m = _FUNC.match(body)
    if not m:
        raise _Unparsable("call does not start with <function=NAME>")
    name = m.group(1).strip()
    rest = body[m.end():]
    end = rest.rfind("</function>")
    if end < 0:
        raise _Unparsable("missing </function>")
    if rest[end + len("</function>"):].strip():
        raise _Unparsable("text after </function> inside <tool_call>")
    rest = rest[:end]
    params = params_of.get(name) or {}
    props = params.get("properties") or {}
    ap = params.get("additionalProperties")
    args: dict = {}
    pos = 0
    while True:
        while pos < len(rest) and rest[pos] in " \n\t\r":
            pos += 1
        if pos >= len(rest):
            break
        if not rest.startswith("<parameter=", pos):
            raise _Unparsable(f"expected <parameter=...> at {rest[pos:pos + 30]!r}")
        close = rest.find(">", pos)
        if close < 0:
            raise _Unparsable("unterminated <parameter=")
        pname = rest[pos + len("<parameter="):close]
        if pname not in props:  # the grammar writes names exactly; other producers may pad them with spaces
            pname = pname.strip()
        vstart = close + 1
        if rest.startswith("\n", vstart):
            vstart += 1
        vend = rest.find(PARAM_END, vstart)
        if vend >= 0:
            raw, pos = rest[vstart:vend], vend + len(PARAM_END)
        else:
            vend = rest.find("</parameter>", vstart)
            if vend < 0:
                raise _Unparsable(f"missing </parameter> for {pname!r}")
            raw = rest[vstart:vend]
            raw = raw[:-1] if raw.endswith("\n") else raw
            pos = vend + len("</parameter>")
        if pname in args:
            raise _Unparsable(f"parameter {pname!r} given twice")
        sub = props.get(pname, ap if isinstance(ap, dict) else None)
        args[pname] = _xml_value(raw, sub, params)
    return name, args


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
    params_of = {tool_function(t)["name"]: tool_parameters(t) for t in tools}
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
            name, args = _parse_hermes(body) if call_format == "hermes" else _parse_xml(body, params_of)
        except _Unparsable as e:
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
