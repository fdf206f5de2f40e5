"""Tool-call formats, one module per format, and the dispatch they share.

    detect_call_format(chat_template) -> "xml" | "hermes"
    render_call(name, arguments, call_format, parameters=None) -> "<tool_call>\\n...\\n</tool_call>"
    render_calls(calls, call_format, tools=None) -> the calls joined the way the chat templates join them ("\\n")
    build_call_region_lark(tools, call_format, ...) -> llguidance lark text for the call region (starts at <tool_call>)
    FORMATS[call_format].parse_body(body, parameters_of) -> (name, arguments)      (parser.py uses it)

Hermes (hermes.py): <tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>
XML (qwen_xml.py):  <tool_call>\\n<function=NAME>\\n<parameter=P>\\nVALUE\\n</parameter>\\n...</function>\\n</tool_call>
Each format module has the same names: render_body, parse_body, body_lark (the lark rules of one tool's call body)
and REGION_LARK (rules the region needs once); the `<tool_call>` envelope is common (base.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

from fmoe.structured.formats import hermes, qwen_xml
from fmoe.structured.formats.base import TOOL_CALL, TOOL_CALL_END, MalformedCall
from fmoe.structured.schema import SchemaFeatureError, parameters_by_name, tool_function, tool_parameters

__all__ = ["CallFormat", "FORMATS", "TOOL_CALL", "TOOL_CALL_END", "MalformedCall", "detect_call_format",
           "detect_call_format_dir",
           "format_module", "render_call", "render_calls", "build_call_region_lark"]

CallFormat = Literal["hermes", "xml"]
FORMATS: dict[str, ModuleType] = {"xml": qwen_xml, "hermes": hermes}


def detect_call_format(chat_template: str) -> CallFormat:
    """'xml' for Qwen3.5-style templates (<function=...>/<parameter=...>), 'hermes' otherwise."""
    if chat_template and ("<function=" in chat_template or "<parameter=" in chat_template):
        return "xml"
    return "hermes"


def detect_call_format_dir(model_dir) -> CallFormat | None:
    """The call format of a model folder's chat template (tokenizer_config.json, chat_template.jinja or
    chat_template.json), without loading anything else; None when the folder has no template."""
    import json
    from pathlib import Path

    d = Path(model_dir)
    texts: list[str] = []
    try:
        if (d / "chat_template.jinja").is_file():
            texts.append((d / "chat_template.jinja").read_text(encoding="utf-8"))
        for f in ("tokenizer_config.json", "chat_template.json"):
            if (d / f).is_file():
                t = json.loads((d / f).read_text(encoding="utf-8")).get("chat_template")
                if isinstance(t, list):
                    t = " ".join(x.get("template", "") for x in t if isinstance(x, dict))
                if isinstance(t, str):
                    texts.append(t)
    except (OSError, ValueError):
        return None
    return detect_call_format("\n".join(texts)) if texts else None


def format_module(call_format: str) -> ModuleType:
    """The module of a call format (FORMATS[call_format]); ValueError for an unknown one."""
    try:
        return FORMATS[call_format]
    except KeyError:
        raise ValueError(f"unknown call format {call_format!r} (one of {sorted(FORMATS)})") from None


def render_call(name: str, arguments: dict, call_format: CallFormat, parameters: dict | None = None) -> str:
    """One call block exactly as the grammar produces it (and as the official templates render it)."""
    body = format_module(call_format).render_body(name, arguments, parameters)
    return f"{TOOL_CALL}\n{body}\n{TOOL_CALL_END}"


def render_calls(calls: list[tuple[str, dict]], call_format: CallFormat, tools: list[dict] | None = None) -> str:
    params = parameters_by_name(tools)
    return "\n".join(render_call(n, a, call_format, params.get(n)) for n, a in calls)


def build_call_region_lark(tools: list[dict], call_format: CallFormat, *, parallel_calls: bool = True,
                           max_calls: int = 4, only: str | None = None,
                           tool_call: str = TOOL_CALL, tool_call_end: str = TOOL_CALL_END) -> tuple[str, dict]:
    """Lark grammar for the call region: one call, then up to max_calls-1 more separated by "\\n".

    The region starts with the <tool_call> token; end of turn is the tokenizer's EOS (accepted once the grammar is).
    Returns (lark text, {tool name: SchemaFeatureError}) where the dict lists the tools whose schema could not be
    compiled (the caller raises). `only` restricts the calls to one named tool (tool_choice={"name": ...}).
    `tool_call`/`tool_call_end` are the lark terms of the envelope tokens (e.g. "<[248058]>").
    """
    fmt = format_module(call_format)
    rules: list[str] = []
    alts: list[str] = []
    errors: dict[str, SchemaFeatureError] = {}
    for i, tool in enumerate(tools):
        name = tool_function(tool)["name"]
        if only is not None and name != only:
            continue
        try:
            rules += fmt.body_lark(i, name, tool_parameters(tool))
        except SchemaFeatureError as e:
            errors[name] = e
            continue
        alts.append(f"t{i}")
    n_more = max(0, max_calls - 1) if parallel_calls else 0
    head = [
        "%llguidance {}",
        "start: call" + (f' ("\\n" call){{0,{n_more}}}' if n_more else ""),
        f"call: {tool_call} \"\\n\" body \"\\n\" {tool_call_end}",
        "body: " + (" | ".join(alts) if alts else '""'),
        *fmt.REGION_LARK,
    ]
    return "\n".join(head + rules) + "\n", errors
