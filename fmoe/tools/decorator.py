"""``@tool``: turn a typed, documented Python function into a Tool.

The JSON Schema of the arguments comes from the signature (through a pydantic model of the parameters, so any
type pydantic understands works: str, int, float, bool, Literal, Enum, list[...], dict[...], Optional, unions,
pydantic models, Annotated[..., Field(...)] constraints), the description and per-argument docs from the
docstring. ``$defs`` are inlined (kept only for recursive types), ``title`` keys dropped, property order follows
the signature, extra arguments are refused (``additionalProperties: false``).

    @tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict:
        '''Current weather of a city.

        Args:
            city: name of the city.
            unit: temperature unit.
        '''

    get_weather("Paris")                                  # still a plain function
    await get_weather.acall({"city": "Paris"}, timeout=5)  # -> ToolResult
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import typing
import warnings
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from fmoe.errors import ToolArgumentError, ToolDefinitionError
from fmoe.tools.base import DEFAULT_MAX_OUTPUT, Tool
from fmoe.tools.docstring import parse_docstring

_UNSET: Any = object()

# JSON Schema keywords whose values are schemas / maps of schemas / lists of schemas (Draft 2020-12).
_SCHEMA_KEYS = {"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
                "unevaluatedItems", "unevaluatedProperties", "additionalItems"}
_SCHEMA_MAP_KEYS = {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions"}
_SCHEMA_LIST_KEYS = {"anyOf", "oneOf", "allOf", "prefixItems"}


# ---------------------------------------------------------------------------------------------------------------
# schema clean-up
# ---------------------------------------------------------------------------------------------------------------
def clean_schema(schema: dict) -> dict:
    """Inline ``$defs`` references (recursive ones stay as ``$ref`` into a top-level ``$defs``), drop ``title``."""
    defs: dict = dict(schema.get("$defs") or {})
    defs.update(schema.get("definitions") or {})
    needed: set[str] = set()

    def ref_name(ref: str) -> str | None:
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix) and ref[len(prefix):] in defs:
                return ref[len(prefix):]
        return None

    def walk(node: Any, stack: frozenset) -> Any:
        if not isinstance(node, dict):
            return node
        node = {k: v for k, v in node.items() if k not in ("title", "$defs", "definitions")}
        # allOf: [{$ref}] with siblings (older pydantic) -> treat as a plain $ref with siblings
        all_of = node.get("allOf")
        if "$ref" not in node and isinstance(all_of, list) and len(all_of) == 1 and set(all_of[0]) == {"$ref"}:
            node.pop("allOf")
            node["$ref"] = all_of[0]["$ref"]
        out: dict = {}
        for k, v in node.items():
            if k in _SCHEMA_KEYS:
                out[k] = walk(v, stack)
            elif k in _SCHEMA_MAP_KEYS and isinstance(v, dict):
                out[k] = {pk: walk(pv, stack) for pk, pv in v.items()}
            elif k in _SCHEMA_LIST_KEYS and isinstance(v, list):
                out[k] = [walk(x, stack) for x in v]
            else:
                out[k] = v
        out = _ordered(out)
        if "$ref" in out:
            name = ref_name(out["$ref"])
            if name is None:
                return out
            if name in stack:  # recursive type: keep the reference
                needed.add(name)
                out["$ref"] = f"#/$defs/{name}"
                return out
            target = walk(defs[name], stack | {name})
            siblings = {k: v for k, v in out.items() if k != "$ref"}
            return _ordered({**target, **siblings})
        return out

    result = walk(schema, frozenset())
    emitted: dict = {}
    while needed - set(emitted):
        for name in sorted(needed - set(emitted)):
            emitted[name] = walk(defs[name], frozenset({name}))
    if emitted:
        result["$defs"] = emitted
    return result


def _ordered(node: dict) -> dict:
    """'type' first, then 'description', then the rest in their order (reads better in a prompt)."""
    head = {k: node[k] for k in ("type", "description") if k in node}
    return {**head, **{k: v for k, v in node.items() if k not in head}}


# ---------------------------------------------------------------------------------------------------------------
# the tool
# ---------------------------------------------------------------------------------------------------------------
async def run_in_daemon_thread(fn: Callable, *args: Any, name: str = "tool", **kwargs: Any) -> Any:
    """Run a blocking callable in a fresh daemon thread (a hung tool never blocks the loop or interpreter exit).
    When the caller stops waiting (timeout), a thread still running is counted and listed by
    abandoned_tool_threads()."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def runner() -> None:
        try:
            value, ok = ctx.run(fn, *args, **kwargs), True
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            value, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop is gone (the caller timed out and left)
            pass

    t = threading.Thread(target=runner, name=f"fmoe-tool-{name}", daemon=True)
    t.start()
    try:
        return await fut
    except asyncio.CancelledError:   # the caller gave up (the tool's timeout): a Python thread cannot be killed
        if t.is_alive():
            _abandon(name, t)
        raise


_ABANDONED: list[tuple[str, float, threading.Thread]] = []
_ABANDONED_TOTAL = 0
_ABANDONED_LOCK = threading.Lock()


def _abandon(name: str, t: threading.Thread) -> None:
    global _ABANDONED_TOTAL
    import logging
    import time

    with _ABANDONED_LOCK:
        _ABANDONED_TOTAL += 1
        _ABANDONED.append((name, time.monotonic(), t))
    logging.getLogger("fmoe.tools").warning("tool %r timed out; its thread keeps running in the background "
                                            "(synchronous Python code cannot be killed)", name)


def abandoned_tool_threads() -> dict:
    """Synchronous tools that timed out: {"total": how many since the process started, "running": [{"tool",
    "running_s"}] of those whose thread is still running}. The agent reports them in its run stats."""
    import time

    now = time.monotonic()
    with _ABANDONED_LOCK:
        _ABANDONED[:] = [a for a in _ABANDONED if a[2].is_alive()]
        return {"total": _ABANDONED_TOTAL,
                "running": [{"tool": n, "running_s": round(now - t0, 3)} for n, t0, _ in _ABANDONED]}


class FunctionTool(Tool):
    """A Tool backed by a Python function (made by ``@tool``). Calling the object calls the function."""

    def __init__(self, fn: Callable, *, name: str | None = None, description: str | None = None,
                 timeout: float | None = None, max_output: int | None = DEFAULT_MAX_OUTPUT):
        if not callable(fn):
            raise ToolDefinitionError(f"@tool needs a function, got {fn!r}")
        self.fn = fn
        tool_name = name or getattr(fn, "__name__", None)
        if not tool_name or tool_name == "<lambda>":
            raise ToolDefinitionError("@tool on a lambda needs name=...")
        doc = parse_docstring(inspect.getdoc(fn))
        self.returns_doc = doc.returns
        self.is_async = inspect.iscoroutinefunction(fn)
        self._model, self._slots = _build_params_model(fn, tool_name, doc.params)
        parameters = _parameters_schema(self._model, tool_name)
        super().__init__(tool_name, description if description is not None else doc.description, parameters,
                         timeout=timeout, max_output=max_output)
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            try:
                setattr(self, attr, getattr(fn, attr))
            except AttributeError:
                pass
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    # -- Tool hooks --------------------------------------------------------------------------------------------
    def _validate(self, arguments: dict) -> tuple[list, dict]:
        try:
            inst = self._model.model_validate(arguments)
        except ValidationError as e:
            raise ToolArgumentError(format_validation_error(self.name, e)) from None
        args: list = []
        kwargs: dict = {}
        for internal, pname, kind in self._slots:
            value = getattr(inst, internal)
            if kind == inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[pname] = value
        return args, kwargs

    async def _invoke(self, validated: tuple[list, dict]) -> Any:
        args, kwargs = validated
        if self.is_async:
            value = await self.fn(*args, **kwargs)
        else:
            value = await run_in_daemon_thread(self.fn, *args, name=self.name, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value


def format_validation_error(tool_name: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(arguments)"
        typ = err.get("type", "")
        if typ == "missing":
            parts.append(f"missing required argument '{loc}'")
        elif typ == "extra_forbidden":
            parts.append(f"unknown argument '{loc}'")
        else:
            got = repr(err.get("input"))
            if len(got) > 60:
                got = got[:57] + "..."
            parts.append(f"argument '{loc}': {err.get('msg')} (got {got})")
    return f"invalid arguments for tool {tool_name!r}: " + "; ".join(parts)


def _build_params_model(fn: Callable, tool_name: str, param_docs: dict[str, str]):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot read the signature ({e})") from None
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to raw annotations
        hints = {}
    fields: dict[str, Any] = {}
    slots: list[tuple[str, str, Any]] = []
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {tool_name!r}: *args/**kwargs parameters ({pname!r}) cannot be described by a schema")
        ann = hints.get(pname, p.annotation)
        if ann is inspect.Parameter.empty:
            ann = Any
        extra = {}
        if param_docs.get(pname):
            extra["description"] = param_docs[pname]
        default = ... if p.default is inspect.Parameter.empty else p.default
        internal = f"p{i}"
        fields[internal] = (ann, Field(default, alias=pname, **extra))
        slots.append((internal, pname, p.kind))
    try:
        model = create_model(f"{tool_name}_arguments",
                             __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)
    except Exception as e:  # noqa: BLE001 - pydantic's schema errors are many kinds
        raise ToolDefinitionError(f"tool {tool_name!r}: unsupported parameter type ({e})") from None
    return model, slots


def _parameters_schema(model: type[BaseModel], tool_name: str) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-JSON defaults are just left out
            raw = model.model_json_schema(by_alias=True)
    except Exception as e:  # noqa: BLE001
        raise ToolDefinitionError(f"tool {tool_name!r}: cannot build a JSON schema ({e})") from None
    cleaned = clean_schema(raw)
    schema = {"type": "object", "properties": cleaned.get("properties", {}),
              "required": list(cleaned.get("required", [])), "additionalProperties": False}
    if "$defs" in cleaned:
        schema["$defs"] = cleaned["$defs"]
    return schema


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None,
         timeout: float | None = None, max_output: int | None = DEFAULT_MAX_OUTPUT):
    """Decorator: ``@tool`` or ``@tool(name=..., description=..., timeout=..., max_output=...)``."""

    def wrap(f: Callable) -> FunctionTool:
        if isinstance(f, Tool):
            return f  # type: ignore[return-value]
        return FunctionTool(f, name=name, description=description, timeout=timeout, max_output=max_output)

    if fn is not None:
        return wrap(fn)
    return wrap
