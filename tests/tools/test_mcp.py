"""MCP tools (fmoe/tools/mcp.py) against real servers: the in-repo MCPServer (FastMCP) tests/data/mcp_server.py over
stdio and streamable HTTP, and the reference server mcp-server-time (offline). Listed, called directly, and called
by the demo model from a task file; isError results, timeouts and a crashing server come back as error results."""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from fmoe.errors import TaskFileError  # noqa: E402
from fmoe.tools.registry import ToolRegistry  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "tests" / "data" / "mcp_server.py"
PY = sys.executable


def stdio(**kw) -> dict:
    return {"command": PY, "args": [str(SERVER)], **kw}


def write_task(tmp_path: Path, body: str, name: str = "task.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def call(reg: ToolRegistry, name: str, args: dict, timeout: float = 30):
    return asyncio.run(reg.acall(name, args, timeout=timeout))


@pytest.fixture(scope="module")
def reg():
    mp = pytest.MonkeyPatch()
    mp.setenv("FMOE_MCP_SET_VAR", "world")
    r = ToolRegistry()
    r.add_spec("calculator")
    r.add_mcp([stdio(name="test", timeout=2, env={"FMOE_MCP_TEST_VAR": "hello ${FMOE_MCP_SET_VAR}"})], REPO)
    yield r
    r.close()
    mp.undo()


# ---------------------------------------------------------------------------------------------------- direct
def test_tools_listed_and_namespaced_on_clash(reg):
    names = reg.names()
    # the server's calculator clashes with the built-in: namespaced; the others keep their names
    assert names[:2] == ["calculator", "test__calculator"]
    assert {"add", "fail", "crash", "sleep", "echo_env"} <= set(names)
    add = reg.get("add")
    assert add.parameters["required"] == ["a", "b"] and add.description == "Add two integers."
    assert add.server.name == "test" and add.remote_name == "add"
    assert reg.get("test__calculator").remote_name == "calculator"


def test_calls(reg):
    r = call(reg, "add", {"a": 2, "b": 40})
    assert (r.content, r.is_error) == ("42", False)
    r = call(reg, "test__calculator", {"expression": "1234 * 5678"})
    assert (r.content, r.is_error) == ("7006652", False)
    r = call(reg, "echo_env", {"name": "FMOE_MCP_TEST_VAR"})   # env: reaches the server, ${VAR} expanded
    assert r.content == "hello world"


def test_unset_env_variable_is_an_error():
    from fmoe.tools.mcp import MCPServerError

    with pytest.raises(MCPServerError, match="environment variable FMOE_MCP_UNSET_VAR is not set"):
        ToolRegistry().add_mcp([stdio(env={"X": "${FMOE_MCP_UNSET_VAR}"})], REPO)


def test_arguments_validated_before_the_call(reg):
    r = call(reg, "add", {"a": "x"})
    assert r.is_error and "missing required argument 'b'" in r.content and "'x' is not of type 'integer'" in r.content


def test_is_error_result(reg):
    r = call(reg, "fail", {"message": "boom"})
    assert r.is_error and "boom" in r.content


def test_timeout_then_server_still_answers(reg):
    t0 = time.perf_counter()
    r = call(reg, "sleep", {"seconds": 20}, timeout=60)   # the server's own timeout (2 s) wins
    assert r.is_error and "timed out after 2 s" in r.content and time.perf_counter() - t0 < 10
    assert call(reg, "add", {"a": 1, "b": 1}).content == "2"


def test_crash_is_an_error_then_restart():
    with ToolRegistry() as r:
        r.add_mcp([stdio(name="crashy", restarts=1)], REPO)
        res = call(r, "crash", {})
        assert res.is_error and "MCP server 'crashy' crashed" in res.content
        assert "crashing on purpose" in res.content                # the server's stderr of that call
        assert call(r, "add", {"a": 2, "b": 2}).content == "4"     # restarted at the next call
        call(r, "crash", {})
        res = call(r, "add", {"a": 2, "b": 2})                     # no restarts left
        assert res.is_error and "is not running" in res.content


def test_prefix_filter_and_two_servers():
    with ToolRegistry() as r:
        r.add_mcp([stdio(name="one", tools=["add", "fail"]), stdio(name="two", tools=["add"]),
                   stdio(name="three", tools=["echo_env"], prefix=True)], REPO)
        assert r.names() == ["one__add", "fail", "two__add", "three__echo_env"]
        assert call(r, "two__add", {"a": 1, "b": 2}).content == "3"


def test_mcp_server_time():
    if shutil.which("mcp-server-time") is None:
        pytest.skip("mcp-server-time is not installed (pip install mcp-server-time)")
    with ToolRegistry() as r:
        r.add_mcp([{"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}])
        assert {"get_current_time", "convert_time"} <= set(r.names())
        assert r.get("get_current_time").server.name == "mcp-server-time"
        res = call(r, "get_current_time", {"timezone": "Asia/Tokyo"})
        data = json.loads(res.content)
        assert not res.is_error and data["timezone"] == "Asia/Tokyo" and data["datetime"].endswith("+09:00")
        res = call(r, "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})
        assert "21:00" in res.content
        res = call(r, "get_current_time", {"timezone": "Not/AZone"})
        assert res.is_error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http():
    port = _free_port()
    proc = subprocess.Popen([PY, str(SERVER), "--http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        with ToolRegistry() as r:
            r.add_mcp([{"url": f"http://127.0.0.1:{port}/mcp", "timeout": 10}])
            assert "add" in r.names() and r.get("add").server.name == f"127_0_0_1_{port}"
            assert call(r, "add", {"a": 20, "b": 22}).content == "42"
            assert call(r, "fail", {}).is_error
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------------- task files
def test_task_file_mcp_field_errors(tmp_path):
    from fmoe.agent.taskfile import load_task

    p = write_task(tmp_path, """\
        task: hi
        mcp:
          - command: x
            url: http://127.0.0.1:1/mcp
        """)
    with pytest.raises(TaskFileError, match=r"task.yaml:3: field 'mcp\[0\]': give exactly one of 'command'"):
        load_task(p)
    p = write_task(tmp_path, """\
        task: hi
        mcp:
          - command: x
          - comand: y
        """)
    with pytest.raises(TaskFileError, match=r"task.yaml:4: field 'mcp\[1\].comand': unknown field"):
        load_task(p)
    p = write_task(tmp_path, """\
        task: hi
        mcp:
          - url: ftp://host/mcp
            timeout: -1
        """)
    with pytest.raises(TaskFileError) as e:
        load_task(p)
    assert "task.yaml:4: field 'mcp[0].timeout'" in str(e.value) and "url must be http" in str(e.value)


def test_task_file_server_that_does_not_start(tmp_path):
    from fmoe.agent.taskfile import load_task

    p = write_task(tmp_path, f"""\
        task: hi
        tools: [calculator]
        mcp:
          - {{command: {PY}, args: [-c, "import sys; print('no such server', file=sys.stderr); sys.exit(1)"],
              name: broken}}
        """)
    with pytest.raises(TaskFileError) as e:
        load_task(p)
    msg = str(e.value)
    assert "task.yaml:4: field 'mcp[0]': MCP server 'broken'" in msg and "failed to start" in msg
    assert "no such server" in msg
    p = write_task(tmp_path, """\
        task: hi
        mcp: [{command: /no/such/fmoe-mcp-server}]
        """)
    with pytest.raises(TaskFileError, match=r"task.yaml:2: field 'mcp\[0\]': MCP server 'fmoe-mcp-server'"):
        load_task(p)


def test_task_file_unsupported_schema(tmp_path):
    from fmoe.agent.taskfile import load_task

    body = f"""\
        task: hi
        mcp:
          - command: {PY}
            args: [{SERVER}]
            env: {{MCP_TEST_BAD_SCHEMA: 1}}
            name: strict
        """
    with pytest.raises(TaskFileError) as e:
        load_task(write_task(tmp_path, body))
    msg = str(e.value)
    assert ("task.yaml:3: field 'mcp[0]': MCP server 'strict': tool 'bad_schema': JSON Schema keyword 'pattern' "
            "cannot be enforced") in msg, msg
    task = load_task(write_task(tmp_path, body + "    tools: [add]\n"))   # leaving the tool out: fine
    try:
        assert task.registry.names() == ["add"]
    finally:
        task.close()


def test_schema_checked_in_the_models_call_format(tmp_path):
    """A top-level anyOf is fine as Hermes JSON but cannot be enforced as an XML parameter list: refused at load for
    an XML model (the demo model's format), not at the first turn."""
    from fmoe.agent.taskfile import _task_call_format, load_task
    from fmoe.structured.schema import UnsupportedSchemaError

    spec = stdio(name="anyof", env={"MCP_TEST_ANYOF_SCHEMA": "1"}, tools=["either"])
    with ToolRegistry() as r:
        r.add_mcp([spec], REPO, call_format="hermes")
        assert r.names() == ["either"]
    with pytest.raises(UnsupportedSchemaError) as e:
        ToolRegistry().add_mcp([spec], REPO, call_format="xml")
    assert e.value.keyword == "anyOf" and e.value.index == 0
    assert str(e.value).startswith("MCP server 'anyof': tool 'either': JSON Schema keyword 'anyOf'")
    body = f"""\
        task: hi
        mcp:
          - command: {PY}
            args: [{SERVER}]
            env: {{MCP_TEST_ANYOF_SCHEMA: 1}}
            name: anyof
        """
    p = write_task(tmp_path, body)
    assert _task_call_format(load_task(p, resolve_tools=False)) == "xml"   # no model: the demo model (Qwen3.5)
    with pytest.raises(TaskFileError) as e:
        load_task(p)
    assert ("task.yaml:3: field 'mcp[0]': MCP server 'anyof': tool 'either': JSON Schema keyword 'anyOf' cannot be "
            "enforced") in str(e.value), str(e.value)


def test_tools_list_task_file(tmp_path, capsys, monkeypatch):
    from fmoe.cli.tools import main

    monkeypatch.setenv("COLUMNS", "200")

    p = write_task(tmp_path, f"""\
        task: hi
        tools: [calculator]
        mcp: [{{command: {PY}, args: [{SERVER}], name: test, tools: [calculator, add]}}]
        """)
    assert main(["list", str(p), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["source"], r["function"]["name"]) for r in rows] == [
        ("fmoe.tools.builtin_calculator", "calculator"), ("mcp:test (calculator)", "test__calculator"),
        ("mcp:test", "add")]
    assert main(["list", str(p)]) == 0
    out = capsys.readouterr().out
    assert "mcp:test" in out and "test__calculator" in out
    assert main(["list"]) == 0 and "built-in tools" in capsys.readouterr().out


def test_examples_mcp_yaml_lists():
    if shutil.which("mcp-server-time") is None:
        pytest.skip("mcp-server-time is not installed (pip install mcp-server-time)")
    from fmoe.agent.taskfile import load_task

    task = load_task(REPO / "examples" / "mcp.yaml")
    try:
        assert {"calculator", "get_current_time", "convert_time"} <= set(task.registry.names())
    finally:
        task.close()


# ---------------------------------------------------------------------------------------------------- demo model
@pytest.fixture(scope="module")
def demo():
    from fmoe.engine.loader import load

    return load(None)


def _run(tmp_path, demo, mode: str = "", task: str = "What is 1234 * 5678?"):
    from fmoe.agent.loop import run_task
    from fmoe.agent.taskfile import load_task
    from fmoe.agent.transcript import Transcript

    env = f"env: {{MCP_TEST_CALCULATOR: {mode}}}" if mode else "env: {}"
    p = write_task(tmp_path, f"""\
        system: "You are a helpful assistant. Use the tools when they help."
        task: "{task}"
        mcp:
          - command: {PY}
            args: [{SERVER}]
            {env}
            tools: [calculator]
            name: calc
            restarts: 0
        max_steps: 4
        max_tokens: 256
        transcript: run.jsonl
        expect:
          calls: [{{name: calculator, arguments: {{expression: "1234 * 5678"}}}}]
          answer: "7006652"
        """, f"task{mode}.yaml")
    tf = load_task(p)
    try:
        model, tok = demo
        with Transcript(tf.transcript_path) as tr:
            (r,) = run_task(tf, model, tok, transcript=tr)
    finally:
        tf.close()
    records = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    return r, records


def test_demo_model_calls_mcp_tool(tmp_path, demo):
    r, records = _run(tmp_path, demo)
    assert r.expect["passed"], (r.expect, r.tool_calls, r.answer)
    assert r.tool_calls[0] == {"name": "calculator", "arguments": {"expression": "1234 * 5678"},
                               "result": "7006652", "is_error": False}
    steps = [x for x in records if x["type"] == "tool_step"]
    assert steps[0]["name"] == "calculator" and steps[0]["result"] == "7006652"
    tool_msgs = [x["message"] for x in records if x["type"] == "message" and x["message"]["role"] == "tool"]
    assert tool_msgs[0] == {"role": "tool", "name": "calculator", "content": "7006652"}


@pytest.mark.parametrize("mode,expected", [("fail", "the calculator is out of order"),
                                           ("crash", "MCP server 'calc' crashed")])
def test_demo_model_run_goes_on_after_mcp_error(tmp_path, demo, mode, expected):
    r, records = _run(tmp_path, demo, mode)
    first = r.tool_steps[0]
    assert first.name == "calculator" and first.is_error and expected in first.result
    # the error went back to the model as a tool message, and the model had another turn
    tool_msgs = [x["message"] for x in records if x["type"] == "message" and x["message"]["role"] == "tool"]
    assert tool_msgs[0]["content"].startswith("Error") and expected in tool_msgs[0]["content"]
    assert len(r.model_steps) >= 2 and r.stop_reason in ("final_answer", "max_steps", "repeated_call")
    if mode == "crash" and len(r.tool_steps) > 1:
        assert "is not running" in r.tool_steps[1].result
