"""Hermes JSON tool calls (Qwen3, Flash-MoE chat templates): the body of a call is one JSON object.

    render_body("get_weather", {"city": "Paris"}) -> '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    parse_body('{"name": "get_weather", "arguments": {"city": "Paris"}}', {}) -> ("get_weather", {"city": "Paris"})
    body_lark(0, "get_weather", parameters)
        -> ['t0: "{\\"name\\": \\"get_weather\\", \\"arguments\\": " %json {...} "}"']   (the lark of one body)

The JSON is written as jinja's tojson writes it (", " and ": "). A body sits inside the `<tool_call>` envelope
(formats/base.py); the functions here have the same names and signatures as in qwen_xml.py.
"""

from __future__ import annotations

import json

from fmoe.structured.formats.base import MalformedCall
from fmoe.structured.schema import json_schema_lark, lark_str

# Lark rules the region needs besides the per-tool ones (none: a body is one %json value).
REGION_LARK: tuple[str, ...] = ()


def render_body(name: str, arguments: dict, parameters: dict | None = None) -> str:
    """The call body exactly as the grammar produces it (and as the official template renders it)."""
    return ('{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
            + json.dumps(arguments, ensure_ascii=False) + "}")


def parse_body(body: str, parameters_of: dict[str, dict]) -> tuple[str, dict]:
    """(tool name, arguments) of a call body; raises MalformedCall. Accepts "arguments" given as a JSON string,
    as some models write it."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise MalformedCall(f"call is not valid JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise MalformedCall('call JSON must be an object with a string "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise MalformedCall('"arguments" is a string that is not JSON') from None
    if not isinstance(args, dict):
        raise MalformedCall('"arguments" must be a JSON object')
    return obj["name"], args


def body_lark(index: int, name: str, parameters: dict) -> list[str]:
    """Lark rules of one tool's call body: rule `t{index}`. Raises SchemaFeatureError."""
    head = lark_str('{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": ')
    return [f"t{index}: {head} %json {json_schema_lark(parameters)} " + '"}"']
