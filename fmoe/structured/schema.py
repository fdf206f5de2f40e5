"""JSON-Schema helpers shared by the call formats: reading openai-style tools, resolving local $refs, and turning
(sub)schemas into llguidance grammar text.

    tool_function(tool) -> {"name", "description", "parameters"}     tool_parameters(tool) -> the parameters schema
    parameters_by_name(tools) -> {tool name: parameters schema}
    resolve_local_ref({"$ref": "#/$defs/unit"}, root) -> root["$defs"]["unit"]
    is_plain_string_schema({"type": "string"}) -> True                 (XML writes such values as raw text)
    json_schema_lark(schema) -> the body of an llguidance `%json` rule (Hermes separators, calendar dates)
    standalone_subschema(root["properties"]["p"], root, "/properties/p") -> p's schema with the root's $defs
    lark_str(text) -> text as a lark string literal (JSON-quoted)
    raise SchemaFeatureError("pattern", "why")   a keyword the grammar cannot enforce, while building it; the
                                                 backends report it as UnsupportedSchemaError(tool, keyword, message)
Also the keyword sets (ANNOTATION_KEYWORDS, VALIDATION_KEYWORDS) and string formats as regexes (FORMAT_REGEXES).
"""

from __future__ import annotations

import json
from typing import Any

from fmoe.errors import FmoeError


class SchemaFeatureError(ValueError):
    """Raised while building a grammar: (keyword, message). grammar.py turns it into UnsupportedSchemaError."""

    def __init__(self, keyword: str, message: str):
        super().__init__(message)
        self.keyword = keyword


class UnsupportedSchemaError(FmoeError):
    """A tool's JSON Schema uses a keyword the backend cannot enforce (raised at tool registration / compile)."""

    def __init__(self, tool: str, keyword: str, message: str, backend: str = "llguidance"):
        super().__init__(f"tool {tool!r}: JSON Schema keyword {keyword!r} cannot be enforced by {backend}: {message}")
        self.tool, self.keyword, self.backend = tool, keyword, backend


# Keywords that never constrain a value.
ANNOTATION_KEYWORDS = {"description", "title", "$comment", "default", "examples", "$schema", "$id", "deprecated",
                       "readOnly", "writeOnly", "contentMediaType", "contentEncoding", "x-guidance"}
# Keywords that do (any keyword in neither set is an unknown one, which JSON Schema treats as an annotation).
VALIDATION_KEYWORDS = {
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength",
    "minLength", "pattern", "items", "prefixItems", "additionalItems", "maxItems", "minItems", "uniqueItems",
    "contains", "maxContains", "minContains", "maxProperties", "minProperties", "required", "properties",
    "patternProperties", "additionalProperties", "dependentRequired", "dependentSchemas", "dependencies",
    "propertyNames", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "format",
    "unevaluatedItems", "unevaluatedProperties", "contentSchema"}

# String formats as regexes (llguidance/Rust syntax, ASCII digits; none can contain a newline).
# Calendar-correct dates (30-day months, February 28 days or 29 in leap years, like jsonschema's format checker).
# Years 0001-9999: Python's date (jsonschema's "date" checker) has no year 0, so neither does the grammar.
_YEAR = r"(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP = r"([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DATE = ("(" + _YEAR + r"-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|" + _YEAR + r"-(0[469]|11)-(0[1-9]|[12][0-9]|30)"
         r"|" + _YEAR + r"-02-(0[1-9]|1[0-9]|2[0-8])|" + _LEAP + r"-02-29)")
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
FORMAT_REGEXES = {
    "date-time": _DATE + "[Tt]" + _TIME,
    "date": _DATE,
    "time": _TIME,
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "email": r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+",
}

# The JSON the chat templates write (jinja's tojson): ", " and ": ", no other whitespace.
JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


# ---------------------------------------------------------------------------------------------------- tools
def tool_function(tool: dict) -> dict:
    """The {name, description, parameters} part of an openai-style tool (or a bare function dict)."""
    f = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise ValueError(f"not an openai-style tool: {tool!r}")
    return f


def tool_parameters(tool: dict) -> dict:
    p = tool_function(tool).get("parameters")
    return p if isinstance(p, dict) else {"type": "object", "properties": {}}


def parameters_by_name(tools: list[dict] | None) -> dict[str, dict]:
    """{tool name: its parameters schema}."""
    return {tool_function(t)["name"]: tool_parameters(t) for t in tools or []}


# ---------------------------------------------------------------------------------------------------- schemas
def resolve_local_ref(schema: Any, root: dict) -> Any:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#") and seen < 16:
        node: Any = root
        for part in schema["$ref"][1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return schema
        schema, seen = node, seen + 1
    return schema


def is_plain_string_schema(schema: Any, root: dict | None = None) -> bool:
    """A schema whose values are always strings: XML renders them raw."""
    if root is not None:
        schema = resolve_local_ref(schema, root)
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "string":
        return True
    if "type" not in schema:
        if "enum" in schema and schema["enum"] and all(isinstance(v, str) for v in schema["enum"]):
            return True
        if "const" in schema and isinstance(schema["const"], str):
            return True
    return False


def json_pointer_token(name: str) -> str:
    """A property name as one JSON-Pointer reference token."""
    return name.replace("~", "~0").replace("/", "~1")


def ecma_to_rust_regex(pattern: str) -> str:
    """A JSON-Schema pattern (ECMA-262) as a Rust regex: the common subset is compatible; \\d etc. are ASCII in
    ECMA."""
    return pattern.replace(r"\d", "[0-9]").replace(r"\D", "[^0-9]")


_ROOT_DEF = "__fmoe_root"


def _rebase_refs(node: Any, path: str | None) -> Any:
    """Local $refs of a node moved out of the tool's parameters schema into a standalone schema (a parameter's
    JSON value in XML): refs into `path` (the node's own location) become relative to it, refs to $defs/definitions
    stay (the root's definitions travel along), any other local ref (e.g. "#" for recursion on the whole parameters
    object) points at a copy of the parameters schema carried as $defs/__fmoe_root."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                if path is not None and (v == "#" + path or v.startswith("#" + path + "/")):
                    v = "#" + v[len(path) + 1:]
                elif not (v.startswith("#/$defs/") or v.startswith("#/definitions/")):
                    v = "#/$defs/" + _ROOT_DEF + v[1:]
                out[k] = v
            else:
                out[k] = _rebase_refs(v, path)
        return out
    if isinstance(node, list):
        return [_rebase_refs(v, path) for v in node]
    return node


def _has_root_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return any((k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/" + _ROOT_DEF)) or _has_root_ref(v)
                   for k, v in node.items())
    if isinstance(node, list):
        return any(_has_root_ref(v) for v in node)
    return False


def standalone_subschema(sub: Any, root: dict, path: str | None = None) -> Any:
    """Sub-schema (found at JSON-Pointer `path` in `root`, if known) made self-contained: the root's
    $defs/definitions travel with it so local $refs still resolve (and, if something refers to the root itself, a
    copy of it)."""
    if not isinstance(sub, dict):
        return sub
    out = dict(_rebase_refs(sub, path))
    defs = {k: _rebase_refs(root[k], None) for k in ("$defs", "definitions") if isinstance(root.get(k), dict)}
    for k, v in defs.items():
        if k in out and k != "$defs":
            continue
        out[k] = dict(v, **out[k]) if k in out and isinstance(out[k], dict) else v
    if _has_root_ref(out):
        d = dict(out.get("$defs") or {})
        d[_ROOT_DEF] = _rebase_refs(root, None)
        out["$defs"] = d
    return out


# ---------------------------------------------------------------------------------------------------- lark text
def lark_str(s: str) -> str:
    """A lark string literal."""
    return json.dumps(s, ensure_ascii=False)


_NOT_SCHEMAS = {"enum", "const", "default", "examples", "x-guidance"}


def _dates_as_patterns(node: Any) -> Any:
    """`"format": "date"` -> the calendar regex as `pattern` (where the node has no pattern of its own):
    llguidance's own date format admits year 0000, which the parser's jsonschema check (Python date) rejects."""
    if isinstance(node, list):
        return [_dates_as_patterns(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k in _NOT_SCHEMAS else _dates_as_patterns(v)) for k, v in node.items()}
    if out.get("format") == "date" and "pattern" not in out:
        del out["format"]
        out["pattern"] = "^" + _DATE + "$"
    return out


def json_schema_lark(schema: Any) -> str:
    """The schema as the body of an llguidance `%json` rule, written the way the chat templates write JSON."""
    if schema is True or schema == {}:
        schema = {}
    if schema is False:
        raise SchemaFeatureError("false", "schema `false` admits no value")
    s = _dates_as_patterns(dict(schema))
    s["x-guidance"] = dict(JSON_STYLE, **(schema.get("x-guidance") or {}))
    return json.dumps(s, ensure_ascii=False)
