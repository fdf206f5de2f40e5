"""ToolRegistry: the tools of one agent run, by name; resolves task-file tool specs.

Specs (as written in a task file's ``tools:`` list):

    "calculator"                     built-ins: calculator, files (list/read/write/search_files in the workspace),
    "files" / "time" / "current_time"  time (current_time), python (run_python), shell (run_shell)
    {"shell": {"allow": ["ls", "wc"]}}  a built-in with options for its factory
    "fmoe.tools.demo:get_weather"     module:function (module importable from the task file's dir or the cwd);
    "my_tools.py:get_weather"        a path to a .py file works too; the object may be a Tool, a plain function
                                     (wrapped with @tool) or a list of Tools
    {"file": "my_tools.py"}          every @tool defined in that file
    {"file": "tools.json"}           schema-only declarations (.json/.yaml/.yml: a list, or {"tools": [...]})
    {"name": ..., "description": ..., "parameters": {...}}   one schema-only declaration (OpenAI style; also
                                     {"type": "function", "function": {...}})
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fmoe.errors import ToolDefinitionError, ToolNotFoundError
from fmoe.tools.base import Tool, ToolResult
from fmoe.tools.decorator import FunctionTool, tool
from fmoe.tools.schema_tools import SchemaTool, load_schema_tools

BUILTIN_NAMES = ("calculator", "files", "time", "current_time", "python", "shell")


def _builtin(name: str, options: dict, base_dir: Path, workspace: Path | None) -> list[Tool]:
    def call(factory: Callable, **defaults: Any) -> Any:
        kwargs = {**defaults, **options}
        params = inspect.signature(factory).parameters
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            allowed = [k for k in params if k not in defaults]
            raise ToolDefinitionError(f"built-in tool {name!r}: unknown option(s) {', '.join(unknown)} "
                                      f"(options: {', '.join(allowed) or 'none'})")
        return factory(**kwargs)

    if name == "calculator":
        from fmoe.tools.builtin_calculator import calculator
        if options:
            raise ToolDefinitionError("built-in tool 'calculator' takes no options")
        return [calculator]
    if name in ("time", "current_time"):
        from fmoe.tools.builtin_time import current_time
        if options:
            raise ToolDefinitionError(f"built-in tool {name!r} takes no options")
        return [current_time]
    if name == "files":
        from fmoe.tools.builtin_files import workspace_tools
        opts = dict(options)
        root = opts.pop("root", None)
        root_path = (base_dir / root) if root is not None else workspace
        if root_path is None:
            raise ToolDefinitionError("built-in tool 'files' needs a workspace: set 'workspace:' in the task file")
        options = opts
        return list(call(workspace_tools, root=root_path))
    if name == "python":
        from fmoe.tools.builtin_python import python_tool
        return [call(python_tool, cwd=workspace)]
    if name == "shell":
        from fmoe.tools.builtin_shell import shell_tool
        return [call(shell_tool, cwd=workspace if workspace is not None else base_dir)]
    raise ToolNotFoundError(f"unknown built-in tool {name!r} (built-ins: {', '.join(BUILTIN_NAMES)})")


def _load_file_module(path: Path, spec_text: str):
    if not path.is_file():
        raise ToolNotFoundError(f"tool {spec_text!r}: file not found: {path}")
    real = path.resolve()
    modname = f"fmoe_user_tools_{real.stem}_{hashlib.sha1(str(real).encode()).hexdigest()[:10]}"
    mod = sys.modules.get(modname)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(modname, real)
    if spec is None or spec.loader is None:
        raise ToolDefinitionError(f"tool {spec_text!r}: cannot load {path} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    old_path = list(sys.path)
    sys.path.insert(0, str(real.parent))
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001
        sys.modules.pop(modname, None)
        raise ToolDefinitionError(f"tool {spec_text!r}: loading {path} failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path[:] = old_path
    return mod


def _import_module(modname: str, base_dir: Path, spec_text: str):
    if modname.endswith(".py") or "/" in modname or os.sep in modname:
        return _load_file_module(base_dir / modname, spec_text)
    # the task file's folder, its parent (so `fmoe.tools.demo:get_weather` in examples/x.yaml resolves wherever fmoe
    # runs from), then the working directory
    search = list(dict.fromkeys([str(base_dir), str(Path(base_dir).resolve().parent), os.getcwd()]))
    old_path = list(sys.path)
    sys.path[:0] = [p for p in search if p not in sys.path]
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name and (modname == e.name or modname.startswith(e.name + ".")):
            raise ToolNotFoundError(f"tool {spec_text!r}: no module named {modname!r} "
                                    f"(looked in {', '.join(search)} and the installed packages)") from None
        raise ToolNotFoundError(f"tool {spec_text!r}: importing {modname!r} failed: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise ToolDefinitionError(f"tool {spec_text!r}: importing {modname!r} failed: "
                                  f"{type(e).__name__}: {e}") from None
    finally:
        sys.path[:] = old_path


def _as_tools(obj: Any, where: str) -> list[Tool]:
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, Tool) for t in obj):
        return list(obj)
    if callable(obj) and not isinstance(obj, type):
        return [tool(obj)]
    raise ToolDefinitionError(f"{where} is not a tool or function (got {type(obj).__name__})")


def _module_tools(mod: Any) -> list[Tool]:
    seen: set[int] = set()
    out = []
    for value in vars(mod).values():
        if isinstance(value, FunctionTool) and value.__module__ == mod.__name__ and id(value) not in seen:
            seen.add(id(value))
            out.append(value)
    return out


def resolve_spec(spec: Any, base_dir: str | os.PathLike = ".", *, workspace: str | os.PathLike | None = None
                 ) -> list[Tool]:
    """The tools one spec stands for (see the module docstring). Raises ToolNotFoundError / ToolDefinitionError."""
    base = Path(base_dir)
    ws = base / workspace if workspace is not None else None  # relative workspaces are relative to base_dir
    if isinstance(spec, Tool):
        return [spec]
    if callable(spec) and not isinstance(spec, (str, dict)):
        return [tool(spec)]
    if isinstance(spec, str):
        text = spec.strip()
        if text in BUILTIN_NAMES:
            return _builtin(text, {}, base, ws)
        if ":" in text:
            modname, _, attr = text.rpartition(":")
            if not modname or not attr:
                raise ToolNotFoundError(f"tool {spec!r}: expected 'module:function'")
            mod = _import_module(modname, base, spec)
            obj: Any = mod
            for part in attr.split("."):
                if not hasattr(obj, part):
                    raise ToolNotFoundError(f"tool {spec!r}: module {modname!r} has no attribute {attr!r}")
                obj = getattr(obj, part)
            return _as_tools(obj, f"tool {spec!r}")
        raise ToolNotFoundError(f"unknown tool {spec!r}: not a built-in ({', '.join(BUILTIN_NAMES)}); "
                                f"use 'module:function', {{file: my_tools.py}} or a schema declaration")
    if isinstance(spec, dict):
        if "file" in spec:
            extra = set(spec) - {"file"}
            if extra:
                raise ToolDefinitionError(f"tool spec {{file: ...}}: unknown field(s) {', '.join(sorted(extra))}")
            path = base / str(spec["file"])
            if path.suffix.lower() in (".json", ".yaml", ".yml"):
                return list(load_schema_tools(path))
            mod = _load_file_module(path, str(spec["file"]))
            tools = _module_tools(mod)
            if not tools:
                raise ToolDefinitionError(f"tool file {spec['file']!r}: no @tool functions defined in it")
            return tools
        if "name" in spec or spec.get("type") == "function":
            return [SchemaTool.from_spec(spec)]
        if len(spec) == 1:
            (key, options), = spec.items()
            if key in BUILTIN_NAMES:
                if options is None:
                    options = {}
                if not isinstance(options, dict):
                    raise ToolDefinitionError(f"built-in tool {key!r}: options must be a mapping")
                return _builtin(key, dict(options), base, ws)
        raise ToolDefinitionError(f"unrecognised tool spec {spec!r}: expected a built-in, 'module:function', "
                                  f"{{file: ...}} or {{name, description, parameters}}")
    raise ToolDefinitionError(f"unrecognised tool spec {spec!r}")


class ToolRegistry:
    """Tools by name, in insertion order."""

    def __init__(self, tools: Iterable[Tool | Callable] = ()):
        self._tools: dict[str, Tool] = {}
        self._origin: dict[str, Tool] = {}   # add_spec: the resolved object each registered copy came from
        self._closers: list[Callable[[], None]] = []   # on_close: e.g. MCP sessions (fmoe.tools.mcp)
        for t in tools:
            self.add(t)

    @classmethod
    def from_specs(cls, specs: Iterable[Any], base_dir: str | os.PathLike = ".", *,
                   workspace: str | os.PathLike | None = None) -> "ToolRegistry":
        reg = cls()
        for spec in specs:
            reg.add_spec(spec, base_dir, workspace=workspace)
        return reg

    # -- building ----------------------------------------------------------------------------------------------
    def add(self, t: Tool | Callable, *, replace: bool = False) -> Tool:
        if not isinstance(t, Tool):
            t = tool(t)
        if t.name in self._tools and self._tools[t.name] is not t and not replace:
            raise ToolDefinitionError(f"duplicate tool name {t.name!r}")
        self._tools[t.name] = t
        return t

    @staticmethod
    def resolve(spec: Any, base_dir: str | os.PathLike = ".", *, workspace: str | os.PathLike | None = None
                ) -> list[Tool]:
        return resolve_spec(spec, base_dir, workspace=workspace)

    def add_spec(self, spec: Any, base_dir: str | os.PathLike = ".", *,
                 workspace: str | os.PathLike | None = None) -> list[Tool]:
        out = []
        for t in resolve_spec(spec, base_dir, workspace=workspace):
            if t.name in self._tools and self._origin.get(t.name) is t:   # the same tool listed twice
                out.append(self._tools[t.name])
                continue
            own = copy.copy(t)   # the registry's own copy: per-task settings (max_output) never leak into a
            self.add(own)        # module-level tool object that other registries share
            self._origin[t.name] = t
            out.append(own)
        return out

    # -- lookup ------------------------------------------------------------------------------------------------
    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolNotFoundError(f"unknown tool {name!r} (available: {', '.join(self._tools) or 'none'})") \
                from None

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    @property
    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def openai_schemas(self) -> list[dict]:
        return [t.openai_schema() for t in self._tools.values()]

    def add_mcp(self, specs: Iterable[Any], base_dir: str | os.PathLike = ".", *, timeout: float | None = None,
                max_output: int | None = None, call_format: str | None = None):
        """Start MCP servers (fmoe.tools.mcp: task-file ``mcp:`` entries) and add their tools; close() stops them.
        Their schemas are checked for ``call_format`` (the model's "hermes" / "xml"; None: the JSON form only)."""
        from fmoe.tools.base import DEFAULT_MAX_OUTPUT
        from fmoe.tools.mcp import add_mcp_servers

        return add_mcp_servers(self, list(specs), base_dir, timeout=timeout,
                               max_output=DEFAULT_MAX_OUTPUT if max_output is None else max_output,
                               call_format=call_format)

    # -- resources ---------------------------------------------------------------------------------------------
    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` at close() (tools holding sessions or processes register their cleanup here)."""
        self._closers.append(fn)

    def close(self) -> None:
        """Release what the tools hold (MCP sessions and server processes); idempotent."""
        closers, self._closers = self._closers, []
        for fn in reversed(closers):
            fn()

    def __enter__(self) -> "ToolRegistry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calling -----------------------------------------------------------------------------------------------
    async def acall(self, name: str, arguments: dict | str | None = None, *,
                    timeout: float | None = None) -> ToolResult:
        """Call a tool by name; an unknown name is an error result (for the model), not an exception."""
        t = self._tools.get(name)
        if t is None:
            return ToolResult(f"unknown tool {name!r} (available: {', '.join(self._tools) or 'none'})", True)
        return await t.acall(arguments, timeout=timeout)
