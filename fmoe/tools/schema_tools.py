"""Schema-only tools: OpenAI-style function declarations without code.

The agent constrains generation to the declared parameters and validates the arguments, but runs nothing:
calling a SchemaTool returns the validated arguments (as JSON) as its result. Useful to extract structured data
or to let the caller execute the calls itself.

    SchemaTool.from_spec({"name": "lookup", "description": "...", "parameters": {...}})
    SchemaTool.from_spec({"type": "function", "function": {...}})
    load_schema_tools("tools.json")   # a list of those, or {"tools": [...]}; .json, .yaml or .yml
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from fmoe.errors import ToolArgumentError, ToolDefinitionError, ToolNotFoundError
from fmoe.tools.base import DEFAULT_MAX_OUTPUT, Tool

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class SchemaTool(Tool):
    executable = False

    def __init__(self, name: str, description: str = "", parameters: dict | None = None, *,
                 timeout: float | None = None, max_output: int | None = DEFAULT_MAX_OUTPUT):
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ToolDefinitionError(f"invalid tool name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        if parameters is None:
            parameters = {"type": "object", "properties": {}, "additionalProperties": False}
        if not isinstance(parameters, dict):
            raise ToolDefinitionError(f"tool {name!r}: 'parameters' must be a JSON Schema object")
        if parameters.get("type", "object") != "object":
            raise ToolDefinitionError(f"tool {name!r}: 'parameters' must have type 'object'")
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            raise ToolDefinitionError(f"tool {name!r}: invalid parameters schema at {where}: {e.message}") from None
        super().__init__(name, description or "", parameters, timeout=timeout, max_output=max_output)
        self._validator = Draft202012Validator(parameters)

    @classmethod
    def from_spec(cls, spec: dict) -> "SchemaTool":
        if not isinstance(spec, dict):
            raise ToolDefinitionError(f"a tool declaration must be an object, got {type(spec).__name__}")
        if spec.get("type") == "function" and isinstance(spec.get("function"), dict):
            spec = spec["function"]
        unknown = set(spec) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise ToolDefinitionError(f"tool declaration {spec.get('name', '?')!r}: unknown field(s) "
                                      f"{', '.join(sorted(unknown))}")
        if "name" not in spec:
            raise ToolDefinitionError("tool declaration without a 'name'")
        return cls(spec["name"], spec.get("description", ""), spec.get("parameters"))

    def _validate(self, arguments: dict) -> dict:
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(map(str, e.absolute_path)))
        if not errors:
            return arguments
        parts = []
        for err in errors[:8]:
            path = ".".join(str(p) for p in err.absolute_path)
            if err.validator == "required" and not path:
                missing = [r for r in err.validator_value if r not in (err.instance or {})]
                parts.append("; ".join(f"missing required argument '{m}'" for m in missing) or err.message)
            elif err.validator == "additionalProperties" and not path:
                allowed = set((err.schema or {}).get("properties", {}))
                extra = [k for k in err.instance if k not in allowed]
                parts.append("; ".join(f"unknown argument '{k}'" for k in extra) or err.message)
            else:
                parts.append(f"argument '{path or '(arguments)'}': {err.message}")
        raise ToolArgumentError(f"invalid arguments for tool {self.name!r}: " + "; ".join(parts))

    async def _invoke(self, validated: dict) -> Any:
        return validated


def load_schema_tools(path: str | Path) -> list[SchemaTool]:
    p = Path(path)
    if not p.is_file():
        raise ToolNotFoundError(f"tool declaration file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001
        raise ToolDefinitionError(f"{p}: cannot parse: {e}") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ToolDefinitionError(f"{p}: expected a list of tool declarations")
    out = []
    for i, spec in enumerate(data):
        try:
            out.append(SchemaTool.from_spec(spec))
        except ToolDefinitionError as e:
            raise ToolDefinitionError(f"{p}: tool #{i + 1}: {e}") from None
    return out
