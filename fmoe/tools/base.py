"""The Tool base class and ToolResult: validation, timeout, serialisation and the output cap shared by all tools.

A subclass supplies ``_validate(arguments) -> validated`` (raises ToolArgumentError) and ``_invoke(validated)``
(a coroutine returning any value). ``Tool.acall`` does the rest: parses JSON-string arguments, validates, runs
under a timeout, serialises the value (str as is, everything else as JSON) and caps its size. It never raises for
a failing tool: failures come back as ``ToolResult(is_error=True)`` whose content is a message for the model.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from fmoe.errors import ToolArgumentError, ToolFailed

DEFAULT_MAX_OUTPUT = 16 * 1024  # bytes (UTF-8) of tool output passed back to the model


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False
    truncated: bool = False
    elapsed_s: float = 0.0


def human_size(n: int) -> str:
    """1234567 -> '1.2 MB' (binary multiples, short labels)."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1024.0
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def serialize(value: Any) -> str:
    """str as is; everything else (dict, list, numbers, None, pydantic models, dataclasses, enums...) as JSON."""
    if isinstance(value, str):
        return value
    from pydantic_core import to_jsonable_python

    try:
        data = to_jsonable_python(value, fallback=str)
    except Exception:  # noqa: BLE001 - last resort: the repr-ish text
        return str(value)
    return json.dumps(data, ensure_ascii=False)


def cap_output(text: str, max_bytes: int | None) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes (marker included); say how much was cut."""
    if max_bytes is None:
        return text, False
    data = text.encode("utf-8")
    total = len(data)
    if total <= max_bytes:
        return text, False
    # The marker's own size depends on how much is cut; two passes settle it.
    keep = max_bytes
    marker = ""
    for _ in range(3):
        marker = f"…[truncated {human_size(total - keep)} of {human_size(total)}]"
        keep = max(0, max_bytes - len(marker.encode("utf-8")))
    head = data[:keep].decode("utf-8", errors="ignore")
    return head + marker, True


def format_exception(exc: BaseException) -> str:
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class Tool:
    """Something the model may call: a name, a description and a JSON Schema of its arguments.

    ``executable`` is False for schema-only tools (declared, validated, not run: the result echoes the arguments).
    ``timeout`` (seconds, None = no limit) is the default for ``acall``; ``max_output`` caps result bytes.
    """

    name: str
    description: str
    parameters: dict
    executable: bool = True
    timeout: float | None = None
    max_output: int | None = DEFAULT_MAX_OUTPUT

    def __init__(self, name: str, description: str, parameters: dict, *, timeout: float | None = None,
                 max_output: int | None = DEFAULT_MAX_OUTPUT):
        self.name = name
        self.description = description
        self.parameters = parameters
        self.timeout = timeout
        self.max_output = max_output

    # -- schema ------------------------------------------------------------------------------------------------
    def openai_schema(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- to implement ------------------------------------------------------------------------------------------
    def _validate(self, arguments: dict) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _invoke(self, validated: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- calling -----------------------------------------------------------------------------------------------
    def validate(self, arguments: dict | str | None) -> Any:
        """Validate arguments (a dict or a JSON object string); raise ToolArgumentError naming the argument."""
        if arguments is None:
            arguments = {}
        if isinstance(arguments, (str, bytes)):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ToolArgumentError(f"invalid arguments for tool {self.name!r}: not valid JSON ({e})") from None
        if not isinstance(arguments, dict):
            raise ToolArgumentError(
                f"invalid arguments for tool {self.name!r}: expected a JSON object, got {type(arguments).__name__}")
        return self._validate(arguments)

    async def acall(self, arguments: dict | str | None = None, *, timeout: float | None = None) -> ToolResult:
        """Validate, run (under ``timeout`` or ``self.timeout``), serialise and cap. Never raises for tool failures."""
        t0 = time.perf_counter()
        limit = timeout if timeout is not None else self.timeout

        def done(content: str, is_error: bool) -> ToolResult:
            text, truncated = cap_output(content, self.max_output)
            return ToolResult(text, is_error, truncated, time.perf_counter() - t0)

        try:
            validated = self.validate(arguments)
        except ToolArgumentError as e:
            return done(str(e), True)
        try:
            if limit is not None and limit > 0:
                value = await asyncio.wait_for(self._invoke(validated), timeout=limit)
            else:
                value = await self._invoke(validated)
        except asyncio.TimeoutError:
            return done(f"tool {self.name!r} timed out after {limit:g} s", True)
        except asyncio.CancelledError:
            raise
        except ToolFailed as e:
            return done(str(e), True)
        except Exception as e:  # noqa: BLE001 - a failing tool is a result for the model, not a crash
            return done(format_exception(e), True)
        try:
            content = serialize(value)
        except Exception as e:  # noqa: BLE001
            return done(f"could not serialise the result of {self.name!r}: {format_exception(e)}", True)
        return done(content, False)

    def call(self, arguments: dict | str | None = None, *, timeout: float | None = None) -> ToolResult:
        """Synchronous ``acall`` (not from inside a running event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.acall(arguments, timeout=timeout))
        raise RuntimeError("Tool.call() inside a running event loop: use 'await tool.acall(...)'")
