"""A small MCP server for tests/tools/test_mcp.py, built with the official SDK's high-level server (FastMCP, called
``MCPServer`` since mcp 2).

    python tests/data/mcp_server.py                          # stdio
    python tests/data/mcp_server.py --http PORT              # streamable HTTP on 127.0.0.1:PORT/mcp

Tools:
    calculator(expression)  the same name, description and parameters as fmoe's built-in calculator, so that the demo
                            model (which knows its own tools only) calls it in end-to-end runs;
                            MCP_TEST_CALCULATOR=fail: every call is an isError result, =crash: the server exits
    add(a, b)               a + b
    fail(message)           an anticipated failure: a result with isError set
    crash()                 the server process exits at once (the client sees the connection drop)
    sleep(seconds)          sleeps, then answers "slept" (timeouts)
    echo_env(name)          the value of an environment variable of the server process (env: of the task file)
    bad_schema(code)        a parameter with a regex llguidance cannot compile (look-ahead): rejected at load
                            (only listed when MCP_TEST_BAD_SCHEMA=1)
    either(a, b)            a top-level anyOf (a or b required): fine as Hermes JSON, not enforceable as an XML
                            parameter list, so refused at load for XML models (only listed when MCP_TEST_ANYOF_SCHEMA=1)
"""
from __future__ import annotations

import asyncio
import math
import os
import sys
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer("fmoe-test", log_level="WARNING")

CALC_DESCRIPTION = (
    "Evaluate an arithmetic expression and return the result.\n\nSupports numbers, + - * / // % ** and parentheses, "
    "the constants pi and e, and the functions sqrt, sin, cos, tan, log, log10, log2, exp, abs, round, min, max, floor "
    "and ceil.")
CALC_PARAMETERS = {"type": "object",
                   "properties": {"expression": {"type": "string",
                                                 "description": "The expression, e.g. \"(3 + 4) * 2 ** 0.5\"."}},
                   "required": ["expression"], "additionalProperties": False}


@mcp.tool(description=CALC_DESCRIPTION)
def calculator(expression: str) -> str:
    mode = os.environ.get("MCP_TEST_CALCULATOR", "")
    if mode == "fail":
        raise ToolError("the calculator is out of order")
    if mode == "crash":
        print("fmoe-test: the calculator crashes", file=sys.stderr, flush=True)
        os._exit(3)
    names = {k: getattr(math, k) for k in ("sqrt", "sin", "cos", "tan", "log", "log10", "log2", "exp", "floor",
                                           "ceil", "pi", "e")}
    names.update(abs=abs, round=round, min=min, max=max)
    try:
        value = eval(expression, {"__builtins__": {}}, names)   # test data only
    except Exception as e:  # noqa: BLE001
        raise ToolError(f"cannot evaluate {expression!r}: {e}") from None
    return str(value)


@mcp.tool(description="Add two integers.")
def add(a: int, b: int) -> int:
    return a + b


@mcp.tool(description="Always fails with the given message.")
def fail(message: str = "it failed") -> str:
    raise ToolError(message)


@mcp.tool(description="Kills the server process.")
def crash() -> str:
    print("fmoe-test: crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@mcp.tool(description="Sleep, then answer.")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@mcp.tool(description="The value of an environment variable of the server.")
def echo_env(name: str) -> str:
    return os.environ.get(name, "(unset)")


if os.environ.get("MCP_TEST_BAD_SCHEMA") == "1":
    @mcp.tool(description="A tool whose schema the grammar cannot enforce.")
    def bad_schema(code: str) -> str:
        return code

    # pydantic cannot compile this pattern either: set the schema by hand
    mcp._tool_manager.get_tool("bad_schema").parameters = {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "^(?=A)[A-Z]+$"}}, "required": ["code"]}

if os.environ.get("MCP_TEST_ANYOF_SCHEMA") == "1":
    @mcp.tool(description="A tool whose parameters object has a top-level anyOf.")
    def either(a: str = "", b: str = "") -> str:
        return a or b

    mcp._tool_manager.get_tool("either").parameters = {
        "type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}

# The calculator's parameters exactly as fmoe's built-in declares them (no pydantic titles), so the demo model sees
# the tool it was trained on.
mcp._tool_manager.get_tool("calculator").parameters = CALC_PARAMETERS


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        mcp.run()
