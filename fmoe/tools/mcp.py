"""MCP tools: the tools of Model Context Protocol servers, through the official ``mcp`` Python SDK.

A task file's ``mcp:`` list names the servers (stdio: a command; or streamable HTTP: a url)::

    mcp:
      - command: mcp-server-time                    # stdio: started as a subprocess (cwd: the task file's folder)
        args: [--local-timezone, UTC]
        env: {TZ: UTC}                              # added to the SDK's minimal default environment; ${VAR} expands
        name: time                                  # the server's name (default: from the command or url)
        timeout: 10                                 # seconds per call (default: the task's tool_timeout)
      - url: http://127.0.0.1:8000/mcp              # streamable HTTP
        headers: {Authorization: "Bearer ${TOKEN}"}
        tools: [search]                             # only these tools (default: all)
        prefix: true                                # always name them NAME__TOOL (default: only on name clashes)

    manager = add_mcp_servers(registry, specs, base_dir)   # connects, lists, checks schemas, adds MCPTools
    registry.close()                                       # (or manager.close()): sessions closed, servers stopped

Every server's session runs on one background event-loop thread (the SDK is async; the agent calls tools from its
own short-lived loops). A tool's input schema is checked at load against what the grammar can enforce in the
model's call format (fmoe.structured.grammar.schema_grammar_check): an unsupported keyword is an error naming the
server, the tool and the keyword.
Tools whose names clash with another tool (a built-in, a task tool, another server's) are named ``server__tool``.
Calls have a timeout; an ``isError`` result, a timeout or a crashed server comes back to the model as an error
result (a crashed stdio server is restarted at the next call, at most ``restarts`` times) and the run goes on.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fmoe.errors import ToolDefinitionError, ToolError, ToolFailed
from fmoe.tools.base import DEFAULT_MAX_OUTPUT
from fmoe.tools.schema_tools import SchemaTool

SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SEPARATOR = "__"
INTERPRETERS = {"python", "python3", "uv", "uvx", "npx", "node", "bun", "bunx", "deno", "pipx", "docker", "sh", "bash"}


class MCPServerError(ToolError):
    """An MCP server could not be started, listed or configured; ``index`` is its position in the ``mcp:`` list."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


# ---------------------------------------------------------------------------------------------------- config
class MCPServerSpec(BaseModel):
    """One entry of a task file's ``mcp:`` list."""
    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    prefix: bool = False
    tools: list[str] | None = None
    timeout: float | None = Field(None, gt=0)
    startup_timeout: float = Field(30.0, gt=0)
    restarts: int = Field(1, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not SERVER_NAME_RE.match(v):
            raise ValueError(f"invalid server name {v!r}: use 1-32 of A-Z a-z 0-9 _ -")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            u = urlparse(v)
            if u.scheme not in ("http", "https") or not u.netloc:
                raise ValueError(f"url must be http:// or https://, got {v!r}")
        return v

    @field_validator("env", "headers", mode="before")
    @classmethod
    def _str_values(cls, v: Any) -> Any:
        if isinstance(v, dict):   # YAML turns 1, true, 1.5 into numbers/booleans: they are strings here
            return {k: (json.dumps(x) if isinstance(x, bool) else str(x)) if x is not None else "" for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _one_transport(self) -> "MCPServerSpec":
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (a stdio server) or 'url' (streamable HTTP)")
        if self.url is not None:
            extra = [k for k in ("args", "env", "cwd") if k in self.model_fields_set]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to a stdio server ('command')")
        elif "headers" in self.model_fields_set:
            raise ValueError("'headers' only apply to an HTTP server ('url')")
        if self.command is not None and not self.command.strip():
            raise ValueError("'command' is empty")
        return self

    @property
    def server_name(self) -> str:
        """``name``, else a name from the command (its script or package for interpreters) or the url's host."""
        if self.name:
            return self.name
        if self.url is not None:
            u = urlparse(self.url)
            base = u.hostname or "mcp"
            base = f"{base}_{u.port}" if u.port else base
        else:
            base = Path(self.command).name
            if base.split(".")[0].rstrip("0123456789.") in INTERPRETERS:
                first = next((a for a in self.args if not a.startswith("-") and a not in ("run", "-m")), None)
                if first:
                    base = Path(first).stem if first.endswith(".py") or "/" in first else first.split("@")[0]
        return (re.sub(r"[^A-Za-z0-9_-]", "_", base).strip("_") or "mcp")[:32]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _expand(value: str) -> str:
    """``$VAR`` and ``${VAR}`` from the environment; an unset variable is an error (not an empty string)."""
    def sub(m: re.Match) -> str:
        var = m.group(1) or m.group(2)
        if var not in os.environ:
            raise MCPServerError(f"environment variable {var} is not set (used in {value!r})")
        return os.environ[var]
    return _VAR.sub(sub, value)


# ---------------------------------------------------------------------------------------------------- event loop
class _LoopThread:
    """One daemon thread running an asyncio loop for every MCP session of the process."""
    _lock = threading.Lock()
    _instance: "_LoopThread | None" = None

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="fmoe-mcp", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> "_LoopThread":
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def submit(self, coro):
        """A concurrent.futures.Future of ``coro`` run on the loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


def _size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _tail(path: str | None, n: int = 1500, since: int = 0) -> str:
    """The last lines the server wrote to stderr (after byte ``since``)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(since, size - n))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-8:])


def _exc_text(e: BaseException) -> str:
    """The innermost useful message of an exception (the SDK raises exception groups from its task groups)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    if e.__cause__ is not None and not str(e):
        e = e.__cause__
    msg = str(e)
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ---------------------------------------------------------------------------------------------------- one server
class MCPServer:
    """One server's session, held open by a task on the background loop."""

    def __init__(self, spec: MCPServerSpec, base_dir: Path, index: int = 0):
        self.spec, self.base_dir, self.index = spec, Path(base_dir), index
        self.name = spec.server_name
        self.client = None
        self.tools: list = []                   # the SDK's Tool objects, as listed at start
        self.dead: str | None = None            # why the session ended (crash, closed connection)
        self.restarts_left = spec.restarts
        self._stop: asyncio.Event | None = None
        self._holder: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._log_path: str | None = None
        self._log_file = None

    def describe(self) -> str:
        if self.spec.url is not None:
            return self.spec.url
        return " ".join([self.spec.command, *self.spec.args])

    # -- transport -----------------------------------------------------------------------------------------
    def _transport(self):
        if self.spec.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            if self.spec.headers:
                from mcp.shared._httpx_utils import create_mcp_http_client

                client = create_mcp_http_client(headers={k: _expand(v) for k, v in self.spec.headers.items()})
                return streamable_http_client(_expand(self.spec.url), http_client=client), client
            return streamable_http_client(_expand(self.spec.url)), None
        from mcp.client.stdio import StdioServerParameters, stdio_client

        cwd = self.base_dir / _expand(self.spec.cwd) if self.spec.cwd else self.base_dir
        params = StdioServerParameters(command=_expand(self.spec.command), args=[_expand(a) for a in self.spec.args],
                                       env={k: _expand(v) for k, v in self.spec.env.items()} or None, cwd=str(cwd))
        if self._log_file is None:   # the server's stderr: kept for error messages (O_APPEND: the child writes)
            fd, self._log_path = tempfile.mkstemp(prefix=f"fmoe-mcp-{self.name}-", suffix=".log")
            os.close(fd)
            self._log_file = open(self._log_path, "a", encoding="utf-8")
        return stdio_client(params, errlog=self._log_file), None

    # -- lifecycle (on the background loop) ------------------------------------------------------------------
    async def start(self) -> list:
        """Connect, list the tools; the session stays open until stop()."""
        self._lock = self._lock or asyncio.Lock()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()
        self._stop = asyncio.Event()
        self._holder = loop.create_task(self._hold(ready))
        try:
            return await asyncio.wait_for(asyncio.shield(ready), self.spec.startup_timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise MCPServerError(f"MCP server {self.name!r} ({self.describe()}) did not answer within "
                                 f"{self.spec.startup_timeout:g} s{self._stderr_note()}", self.index) from None

    async def _hold(self, ready: asyncio.Future) -> None:
        from mcp import Client

        http = None
        try:
            transport, http = self._transport()
            async with Client(transport) as client:
                tools, cursor = [], None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = getattr(page, "next_cursor", None)
                    if not cursor:
                        break
                self.client, self.tools, self.dead = client, tools, None
                if not ready.done():
                    ready.set_result(tools)
                await self._stop.wait()
        except BaseException as e:  # noqa: BLE001 - reported to whoever waits, never raised on the loop
            why = _exc_text(e)
            if not ready.done():
                ready.set_exception(MCPServerError(
                    f"MCP server {self.name!r} ({self.describe()}) failed to start: {why}{self._stderr_note()}",
                    self.index))
            elif not self._stop.is_set():
                self.dead = why
        finally:
            self.client = None
            if not ready.done():
                ready.set_exception(MCPServerError(f"MCP server {self.name!r} closed before it listed its tools"
                                                   f"{self._stderr_note()}", self.index))
            if http is not None:
                try:
                    await http.aclose()
                except Exception:  # noqa: BLE001
                    pass

    async def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._holder is not None and not self._holder.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._holder), 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                self._holder.cancel()
        self._holder = None

    def cleanup(self) -> None:
        if self._log_file is not None:
            try:
                self._log_file.close()
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_file = None

    def _stderr_note(self, since: int = 0) -> str:
        tail = _tail(self._log_path, since=since)
        return f"\nserver stderr (last lines):\n{tail}" if tail else ""

    # -- calls (on the background loop) ---------------------------------------------------------------------
    async def call(self, name: str, arguments: dict):
        """The SDK's CallToolResult; raises ToolFailed when the server is gone (and cannot be restarted)."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        async with self._lock:
            if self.client is None:
                if self.restarts_left <= 0:
                    raise ToolFailed(f"MCP server {self.name!r} is not running ({self.dead or 'closed'})")
                self.restarts_left -= 1
                await self.stop()
                try:
                    await self.start()
                except MCPServerError as e:
                    raise ToolFailed(f"MCP server {self.name!r} is not running and could not be restarted: "
                                     f"{e}") from None
            client = self.client
        mark = _size(self._log_path)   # a crash's message: what the server wrote to stderr during this call
        try:
            return await client.call_tool(name, arguments)
        except MCPError as e:
            if e.code == CONNECTION_CLOSED or self.client is None or self._holder is None or self._holder.done():
                self.client = None
                self.dead = f"the connection closed during a call to {name!r}"
                raise ToolFailed(f"MCP server {self.name!r} crashed or closed the connection during the call to "
                                 f"{name!r}{self._stderr_note(mark)}") from None
            raise ToolFailed(f"MCP server {self.name!r}: {name!r} failed: {e}") from None
        except (OSError, EOFError) as e:
            self.client = None
            self.dead = _exc_text(e)
            raise ToolFailed(f"MCP server {self.name!r} is unreachable: {_exc_text(e)}{self._stderr_note(mark)}") \
                from None


# ---------------------------------------------------------------------------------------------------- results
def result_text(result) -> str:
    """A CallToolResult as text for the model: text blocks as they are, other blocks described, structured content
    as JSON when there is no text."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            size = len(getattr(block, "data", "") or "") * 3 // 4
            parts.append(f"[{kind} {getattr(block, 'mime_type', '?')}, {size} bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(block, 'uri', '?')}]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            parts.append(text if text is not None else f"[resource {getattr(res, 'uri', '?')} "
                                                        f"({getattr(res, 'mime_type', None) or 'binary'})]")
        else:
            parts.append(str(block))
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        return json.dumps(structured, ensure_ascii=False)
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- the tool
class MCPTool(SchemaTool):
    """A tool of an MCP server: arguments validated against its input schema here, then called on the server."""
    executable = True

    def __init__(self, server: MCPServer, remote_name: str, name: str, description: str, parameters: dict, *,
                 timeout: float | None = None, max_output: int | None = DEFAULT_MAX_OUTPUT):
        super().__init__(name, description, parameters, timeout=timeout, max_output=max_output)
        self.server, self.remote_name = server, remote_name

    def __repr__(self) -> str:
        return f"<MCPTool {self.name!r} of server {self.server.name!r}>"

    async def acall(self, arguments=None, *, timeout: float | None = None):
        # the server's own timeout: wins over the agent's tool_timeout
        return await super().acall(arguments, timeout=self.timeout if self.timeout is not None else timeout)

    async def _invoke(self, validated: dict) -> Any:
        fut = _LoopThread.get().submit(self.server.call(self.remote_name, validated))
        result = await asyncio.wrap_future(fut)   # cancelled (timeout) -> the call is cancelled on the server loop
        text = result_text(result)
        if getattr(result, "is_error", False):
            raise ToolFailed(text or f"tool {self.remote_name!r} of MCP server {self.server.name!r} failed")
        return text


def _tool_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:64] or "tool"


# ---------------------------------------------------------------------------------------------------- manager
_MANAGERS: "weakref.WeakSet[MCPManager]" = weakref.WeakSet()


class MCPManager:
    """The MCP servers of one registry: started together, closed together (close() is idempotent)."""

    def __init__(self, specs: list[MCPServerSpec], base_dir: str | os.PathLike = "."):
        self.servers = [MCPServer(s, Path(base_dir), i) for i, s in enumerate(specs)]
        seen: dict[str, int] = {}
        for srv in self.servers:   # server names must be unique (they are the namespaces)
            if srv.name in seen:
                n = 2
                while f"{srv.name}{n}" in seen:
                    n += 1
                if srv.spec.name:
                    raise MCPServerError(f"two MCP servers are named {srv.name!r}", srv.index)
                srv.name = f"{srv.name}{n}"
            seen[srv.name] = srv.index
        self.closed = False
        _MANAGERS.add(self)

    def start(self) -> None:
        """Start every server (concurrently); the first failure stops them all and is raised."""
        lt = _LoopThread.get()
        futs = [lt.submit(s.start()) for s in self.servers]
        error = None
        for s, f in zip(self.servers, futs):
            try:
                f.result(timeout=s.spec.startup_timeout + 15)
            except MCPServerError as e:
                error = error or e
            except Exception as e:  # noqa: BLE001
                error = error or MCPServerError(f"MCP server {s.name!r} failed to start: {_exc_text(e)}", s.index)
        if error is not None:
            self.close()
            raise error

    def tools(self, taken: set[str], *, timeout: float | None = None, max_output: int | None = DEFAULT_MAX_OUTPUT,
              call_format: str | None = None) -> list[MCPTool]:
        """MCPTools of every server; names that clash with ``taken`` or with each other become ``server__tool``.
        Each input schema is checked against what the grammar can enforce in ``call_format`` (the model's: "hermes"
        or "xml"; None checks the JSON form only) by fmoe.structured.grammar.schema_grammar_check."""
        from fmoe.structured.grammar import schema_grammar_check
        from fmoe.structured.schema import UnsupportedSchemaError

        chosen: list[tuple[MCPServer, Any]] = []
        for srv in self.servers:
            listed = {t.name: t for t in srv.tools}
            wanted = srv.spec.tools
            if wanted is not None:
                missing = [w for w in wanted if w not in listed]
                if missing:
                    raise MCPServerError(f"MCP server {srv.name!r} has no tool(s) {', '.join(map(repr, missing))} "
                                         f"(it has: {', '.join(listed) or 'none'})", srv.index)
            for t in srv.tools:
                if wanted is None or t.name in wanted:
                    chosen.append((srv, t))
        counts: dict[str, int] = {}
        for _, t in chosen:
            counts[_tool_name(t.name)] = counts.get(_tool_name(t.name), 0) + 1
        out: list[MCPTool] = []
        for srv, t in chosen:
            base = _tool_name(t.name)
            clash = base in taken or counts[base] > 1
            name = _tool_name(f"{srv.name}{SEPARATOR}{t.name}") if (clash or srv.spec.prefix) else base
            if name in taken:
                raise MCPServerError(f"MCP server {srv.name!r}: tool {t.name!r} clashes with the tool {name!r}",
                                     srv.index)
            params = dict(t.input_schema or {"type": "object", "properties": {}})
            try:
                schema_grammar_check([{"type": "function", "function": {"name": t.name, "parameters": params}}],
                                     call_format)
                tool = MCPTool(srv, t.name, name, t.description or getattr(t, "title", None) or "", params,
                               timeout=srv.spec.timeout if srv.spec.timeout is not None else timeout,
                               max_output=max_output)
            except UnsupportedSchemaError as e:
                e.args = (f"MCP server {srv.name!r}: {e}",)
                e.index = srv.index
                raise
            except ToolDefinitionError as e:
                raise MCPServerError(f"MCP server {srv.name!r}: {e}", srv.index) from None
            taken.add(name)
            out.append(tool)
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        lt = _LoopThread.get()
        futs = [lt.submit(s.stop()) for s in self.servers]
        for f in futs:
            try:
                f.result(timeout=15)
            except Exception:  # noqa: BLE001 - closing never raises
                pass
        for s in self.servers:
            s.cleanup()

    def __enter__(self) -> "MCPManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for m in list(_MANAGERS):
        m.close()


def add_mcp_servers(registry, specs: list, base_dir: str | os.PathLike = ".", *, timeout: float | None = None,
                    max_output: int | None = DEFAULT_MAX_OUTPUT, call_format: str | None = None) -> MCPManager:
    """Start the servers of ``specs`` (MCPServerSpec or dicts), add their tools to ``registry`` and have
    ``registry.close()`` close them. Schemas are checked for ``call_format`` (the model's; None: the JSON form).
    Raises MCPServerError / UnsupportedSchemaError (with ``.index``: the spec)."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise MCPServerError("MCP servers need the mcp package: pip install 'fmoe[mcp]' (or pip install mcp)") \
            from None
    parsed = [s if isinstance(s, MCPServerSpec) else MCPServerSpec.model_validate(s) for s in specs]
    manager = MCPManager(parsed, base_dir)
    manager.start()
    try:
        for t in manager.tools(set(registry.names()), timeout=timeout, max_output=max_output,
                               call_format=call_format):
            registry.add(t)
    except BaseException:
        manager.close()
        raise
    registry.on_close(manager.close)
    return manager
