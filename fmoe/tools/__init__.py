"""Tools the agent can call: ``@tool`` functions, built-ins, schema-only declarations, and a registry.

    from fmoe.tools import tool, Tool, ToolResult, ToolRegistry

    @tool
    def lookup(query: str, limit: int = 5) -> list[str]:
        '''Search the notes.

        Args:
            query: words to look for.
            limit: most results to return.
        '''

    lookup.openai_schema()                       # {"type": "function", "function": {name, description, parameters}}
    await lookup.acall({"query": "x"}, timeout=5)  # ToolResult(content, is_error, truncated, elapsed_s)

Built-ins: ``calculator``, ``current_time``, ``workspace_tools(root)`` (list/read/write/search_files),
``python_tool(...)`` (run_python) and ``shell_tool(allow=[...])`` (run_shell), the last two off unless asked for.
"""
from fmoe.tools.base import DEFAULT_MAX_OUTPUT, Tool, ToolResult
from fmoe.tools.decorator import FunctionTool, tool
from fmoe.tools.registry import BUILTIN_NAMES, ToolRegistry, resolve_spec
from fmoe.tools.schema_tools import SchemaTool, load_schema_tools

__all__ = ["tool", "Tool", "ToolResult", "FunctionTool", "SchemaTool", "ToolRegistry", "resolve_spec",
           "load_schema_tools", "BUILTIN_NAMES", "DEFAULT_MAX_OUTPUT",
           "calculator", "current_time", "workspace_tools", "python_tool", "shell_tool"]


def __getattr__(name: str):  # built-ins load lazily (subprocess/zoneinfo imports only when used)
    if name == "calculator":
        from fmoe.tools.builtin_calculator import calculator
        return calculator
    if name == "current_time":
        from fmoe.tools.builtin_time import current_time
        return current_time
    if name == "workspace_tools":
        from fmoe.tools.builtin_files import workspace_tools
        return workspace_tools
    if name == "python_tool":
        from fmoe.tools.builtin_python import python_tool
        return python_tool
    if name == "shell_tool":
        from fmoe.tools.builtin_shell import shell_tool
        return shell_tool
    raise AttributeError(f"module 'fmoe.tools' has no attribute {name!r}")
