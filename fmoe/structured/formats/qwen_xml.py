"""Qwen3.5 XML tool calls: the body of a call is a function tag with one tag per parameter.

    render_body("get_weather", {"city": "Paris", "days": 3}, parameters)
        -> '<function=get_weather>\\n<parameter=city>\\nParis\\n</parameter>\\n'
           '<parameter=days>\\n3\\n</parameter>\\n</function>'
    parse_body(body, {"get_weather": parameters}) -> ("get_weather", {"city": "Paris", "days": 3})
    body_lark(0, "get_weather", parameters) -> lark rules, `t0` the body

A VALUE is raw text when the parameter's schema is a plain string schema, JSON otherwise; it ends at the delimiter
"\\n</parameter>\\n" (PARAM_END), which a raw value therefore never contains. Parameters appear in the schema's
property order (each optional one may be left out), then extra parameters if additionalProperties allows.
A body sits inside the `<tool_call>` envelope (formats/base.py); the functions here have the same names and
signatures as in hermes.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fmoe.structured.formats.base import MalformedCall
from fmoe.structured.schema import (
    ANNOTATION_KEYWORDS, FORMAT_REGEXES, VALIDATION_KEYWORDS, SchemaFeatureError, ecma_to_rust_regex,
    is_plain_string_schema, json_pointer_token, json_schema_lark, lark_str, resolve_local_ref, standalone_subschema,
)

PARAM_END = "\n</parameter>\n"

# Keywords of a tool's top-level parameters object that the parameter-list grammar enforces (or that are inert).
PARAMETERS_OBJECT_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "description", "title", "$defs", "definitions",
    "$schema", "$id", "$comment", "default", "examples", "x-guidance", "unevaluatedProperties"}

# Lark rules the region needs besides the per-tool ones: an unconstrained raw value. Lines, then the delimiter:
# greedy lexemes of one line each (not one lazy lexeme for the whole value), so that llguidance's slicer can skip
# walking the token trie inside a line, which takes the mask from ~4 ms to ~0.05 ms per token (docs/log/grammar.md, pass 4).
# A line that reads "</parameter>" followed by a newline is always the delimiter (the lexer keeps the longer
# match), so a value never contains "\n</parameter>\n", the same rule the lazy form had.
REGION_LARK: tuple[str, ...] = (
    "rawv: RAW_FIRST? RAW_NEXT* " + lark_str(PARAM_END),
    "RAW_FIRST: /[^\\n]+/",
    "RAW_NEXT: /\\n[^\\n]*/",
)

_FUNCTION_TAG = re.compile(r"<function=([^>\n]+)>\n?")
_NAME_UNSAFE = re.compile(r"[<>\n]")  # characters a name cannot have inside <function=...> / <parameter=...>


# ---------------------------------------------------------------------------------------------------- render
def _render_value(value: Any, schema: Any, root: dict | None) -> str:
    if isinstance(value, str) and (schema is None or is_plain_string_schema(schema, root)):
        return value
    return json.dumps(value, ensure_ascii=False)


def render_body(name: str, arguments: dict, parameters: dict | None = None) -> str:
    """The call body exactly as the grammar produces it (and as the official template renders it). Without
    `parameters` every string is written raw."""
    props = (parameters or {}).get("properties") or {}
    order = [k for k in props if k in arguments] + [k for k in arguments if k not in props]
    out = [f"<function={name}>\n"]
    for k in order:
        sub = props.get(k) if parameters is not None else None
        if parameters is not None and sub is None:
            ap = parameters.get("additionalProperties")
            sub = ap if isinstance(ap, dict) else None
        out.append(f"<parameter={k}>\n{_render_value(arguments[k], sub, parameters)}{PARAM_END}")
    out.append("</function>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------------- parse
def _parse_value(raw: str, schema: Any, root: dict) -> Any:
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


def parse_body(body: str, parameters_of: dict[str, dict]) -> tuple[str, dict]:
    """(tool name, arguments) of a call body; raises MalformedCall. A value is typed by the tool's schema
    (`parameters_of[name]`): raw text for plain string schemas, else JSON (raw text when it is not JSON)."""
    m = _FUNCTION_TAG.match(body)
    if not m:
        raise MalformedCall("call does not start with <function=NAME>")
    name = m.group(1).strip()
    rest = body[m.end():]
    end = rest.rfind("</function>")
    if end < 0:
        raise MalformedCall("missing </function>")
    if rest[end + len("</function>"):].strip():
        raise MalformedCall("text after </function> inside <tool_call>")
    rest = rest[:end]
    params = parameters_of.get(name) or {}
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
            raise MalformedCall(f"expected <parameter=...> at {rest[pos:pos + 30]!r}")
        close = rest.find(">", pos)
        if close < 0:
            raise MalformedCall("unterminated <parameter=")
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
                raise MalformedCall(f"missing </parameter> for {pname!r}")
            raw = rest[vstart:vend]
            raw = raw[:-1] if raw.endswith("\n") else raw
            pos = vend + len("</parameter>")
        if pname in args:
            raise MalformedCall(f"parameter {pname!r} given twice")
        sub = props.get(pname, ap if isinstance(ap, dict) else None)
        args[pname] = _parse_value(raw, sub, params)
    return name, args


# ---------------------------------------------------------------------------------------------------- grammar
def _raw_string_terminal(schema: dict, root: dict) -> tuple[str, bool] | None:
    """(lark terminal body for the raw text of a plain-string value, guard) or None when unconstrained.

    `guard` is True when the body could match text containing the "\n</parameter>\n" delimiter, so that the lazy
    value terminal must intersect it with "does not contain the delimiter". The guard costs lexer states and mask
    time, so it is left out when some part of the body can never contain a newline (enum/const literals without
    the delimiter, formats), or when the only constraint is a maxLength (minLength 0): a lazy terminal ends at the
    first delimiter whenever the text before it already matches, which `.{0,n}` always does. (It also avoids an
    llguidance lexer-fuel exhaustion seen with intersected terminals: see docs/log/grammar.md.)
    """
    schema = resolve_local_ref(schema, root)
    parts: list[str] = []
    for k in schema:
        if k in ANNOTATION_KEYWORDS or k in ("type", "enum", "const", "minLength", "maxLength", "pattern", "format",
                                             "$defs", "definitions") or k not in VALIDATION_KEYWORDS:
            continue  # unknown keywords are annotations (JSON Schema ignores them)
        raise SchemaFeatureError(k, f"keyword {k!r} on a raw-text (XML) string parameter")
    if "const" in schema or "enum" in schema:
        vals = [schema["const"]] if "const" in schema else [v for v in schema["enum"] if isinstance(v, str)]
        if not vals or not all(isinstance(v, str) for v in vals):
            raise SchemaFeatureError("enum", "string enum without string values")
        for v in vals:
            if PARAM_END in v:
                raise SchemaFeatureError("enum", f"enum/const value {v!r} contains the XML parameter delimiter")
        return "(" + " | ".join(lark_str(v) for v in vals) + ")", False
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    newline_free = False
    if lo or hi is not None:
        parts.append("/(?s:.){%d,%s}/" % (int(lo or 0), "" if hi is None else int(hi)))
    if "pattern" in schema:
        p = ecma_to_rust_regex(schema["pattern"])
        head = "" if p.startswith("^") else "(?s:.*)"
        tail = "" if (p.endswith("$") and not p.endswith("\\$")) else "(?s:.*)"
        p = p[1:] if p.startswith("^") else p
        p = p[:-1] if tail == "" else p
        parts.append("/" + head + "(?:" + p.replace("/", "\\/") + ")" + tail + "/")
    if "format" in schema:
        fmt = schema["format"]
        if fmt not in FORMAT_REGEXES:
            raise SchemaFeatureError("format", f"string format {fmt!r} in a raw-text (XML) parameter")
        parts.append("/" + FORMAT_REGEXES[fmt].replace("/", "\\/") + "/")
        newline_free = True
    if not parts:
        return None
    if "pattern" not in schema and "format" not in schema and lo:
        # length only, minLength > 0: the lazy terminal can only run past a delimiter that starts before position
        # minLength; forbidding just that keeps the intersection small (the full guard multiplies the states).
        parts.append("~/(?s:.){0,%d}\\n<\\/parameter>\\n(?s:.)*/" % (int(lo) - 1))
        return "(" + " & ".join(parts) + ")", False
    only_max = "pattern" not in schema and "format" not in schema and not lo
    return "(" + " & ".join(parts) + ")", not (newline_free or only_max)


def _lazy_value(rule: str, body_guard: tuple[str, bool]) -> str:
    """A raw value terminal: content matching `body`, never containing the delimiter, then the delimiter (lazy)."""
    term = rule.upper()
    body, guard = body_guard
    if guard:
        body = f"({body} & ~/(?s:.*)\\n<\\/parameter>\\n(?s:.*)/)"
    return f"{term}: {body} {lark_str(PARAM_END)}\n{rule}[lazy]: {term}"


def _raw_value_rule(rule: str, schema: Any, root: dict, rules: list[str]) -> str:
    """The rule for a raw value under `schema`: `rawv` when unconstrained, else a lazy terminal named `rule`
    (appended to `rules`)."""
    body = _raw_string_terminal(schema if isinstance(schema, dict) else {}, root)
    if body is None:
        return "rawv"
    rules.append(_lazy_value(rule, body))
    return rule


def _parameter_list_rules(idx: int, params: dict, rules: list[str]) -> str:
    """Rules for a tool's parameter list (appended to `rules`); returns the rule name."""
    if params.get("type", "object") != "object":
        raise SchemaFeatureError("type", f"XML parameters must be an object schema, got type {params.get('type')!r}")
    for k in params:
        if k in VALIDATION_KEYWORDS and k not in PARAMETERS_OBJECT_KEYWORDS:
            raise SchemaFeatureError(k, f"keyword {k!r} on the parameters object (XML format lists parameters)")
    props: dict = params.get("properties") or {}
    required = list(params.get("required") or [])
    for r in required:
        if r not in props:
            raise SchemaFeatureError("required", f"required parameter {r!r} is not among the properties")
    seq: list[str] = []
    for j, (pname, psch) in enumerate(props.items()):
        if psch is False:
            if pname in required:
                raise SchemaFeatureError("required", f"required parameter {pname!r} has schema false")
            continue
        if _NAME_UNSAFE.search(pname):
            raise SchemaFeatureError("properties", f"parameter name {pname!r} cannot appear in <parameter=...>")
        rname = f"t{idx}_p{j}"
        head = '"<parameter=" ' + lark_str(pname) + ' ">\\n"'  # separate lexemes: see extra parameters below
        if is_plain_string_schema(psch, params):
            value = _raw_value_rule(f"t{idx}_p{j}v", psch, params, rules)
            rules.append(f"{rname}: {head} {value}")
        else:
            value = json_schema_lark(standalone_subschema(psch, params, "/properties/" + json_pointer_token(pname)))
            rules.append(f"{rname}: {head} %json {value} {lark_str(PARAM_END)}")
        seq.append(rname if pname in required else f"{rname}?")
    ap = params.get("additionalProperties", params.get("unevaluatedProperties", True))
    if ap is not False:
        key = "/[^<>\\n=\\s]([^<>\\n=]*[^<>\\n=\\s])?/"  # parsers strip names: no edge whitespace
        if props:
            key += " & ~(" + " | ".join(lark_str(n) for n in props) + ")"
        rules.append(f"T{idx}_XKEY: {key}")
        if isinstance(ap, dict) and ap:
            if is_plain_string_schema(ap, params):
                val = _raw_value_rule(f"t{idx}_xv", ap, params, rules)
            else:
                val = f"%json {json_schema_lark(standalone_subschema(ap, params))} {lark_str(PARAM_END)}"
        else:
            val = "rawv"
        rules.append(f"t{idx}_x: \"<parameter=\" T{idx}_XKEY \">\\n\" {val}")
        seq.append(f"t{idx}_x*")
    rname = f"t{idx}_params"
    rules.append(f"{rname}: " + (" ".join(seq) if seq else '""'))
    return rname


def body_lark(index: int, name: str, parameters: dict) -> list[str]:
    """Lark rules of one tool's call body: rule `t{index}`, its helpers prefixed `t{index}_`/`T{index}_`.
    Raises SchemaFeatureError."""
    if _NAME_UNSAFE.search(name):
        raise SchemaFeatureError("name", f"tool name {name!r} cannot appear in <function=...>")
    rules: list[str] = []
    params = _parameter_list_rules(index, parameters, rules)
    rules.append(f"t{index}: {lark_str(f'<function={name}>' + chr(10))} {params} \"</function>\"")
    return rules
