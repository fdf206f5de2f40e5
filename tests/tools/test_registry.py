"""ToolRegistry and spec resolution; schema-only tools."""
import json

import pytest

from fmoe.errors import ToolDefinitionError, ToolNotFoundError
from fmoe.tools import SchemaTool, ToolRegistry

LOOKUP = {"name": "lookup", "description": "Look up a word.",
          "parameters": {"type": "object", "properties": {"word": {"type": "string"}, "n": {"type": "integer"}},
                         "required": ["word"], "additionalProperties": False}}


def test_builtins_and_module_function(tmp_path):
    (tmp_path / "ws").mkdir()
    reg = ToolRegistry.from_specs(["calculator", "time", "files", "fmoe.tools.demo:get_weather",
                                   {"shell": {"allow": ["echo"]}}], tmp_path, workspace="ws")
    assert reg.names() == ["calculator", "current_time", "list_files", "read_file", "write_file", "search_files",
                           "get_weather", "run_shell"]
    assert reg.get("calculator").call({"expression": "1+1"}).content == "2"
    assert [s["function"]["name"] for s in reg.openai_schemas()] == reg.names()


def test_file_spec_collects_tools(tmp_path):
    (tmp_path / "my_tools.py").write_text(
        "from fmoe.tools import tool\n"
        "from fmoe.tools.demo import get_weather\n"
        "@tool\ndef add(a: int, b: int) -> int:\n    '''Add.'''\n    return a + b\n"
        "@tool\nasync def neg(a: int) -> int:\n    return -a\n"
        "def helper():\n    pass\n")
    tools = ToolRegistry.resolve({"file": "my_tools.py"}, tmp_path)
    assert [t.name for t in tools] == ["add", "neg"]  # imported tools and plain functions are not collected
    assert tools[0].call({"a": 2, "b": 3}).content == "5"
    assert ToolRegistry.resolve("my_tools:add", tmp_path)[0].call({"a": 1, "b": 1}).content == "2"
    assert ToolRegistry.resolve("my_tools.py:neg", tmp_path)[0].name == "neg"


def test_schema_only_tools(tmp_path):
    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": LOOKUP}]))
    (t,) = ToolRegistry.resolve({"file": "tools.json"}, tmp_path)
    (t2,) = ToolRegistry.resolve(LOOKUP, tmp_path)
    for tool in (t, t2):
        assert isinstance(tool, SchemaTool) and tool.executable is False
        r = tool.call({"word": "x", "n": 2})
        assert not r.is_error and json.loads(r.content) == {"word": "x", "n": 2}
        r = tool.call({"n": "2", "zz": 1})
        assert r.is_error and "missing required argument 'word'" in r.content and "'zz'" in r.content
    with pytest.raises(ToolDefinitionError, match="invalid parameters schema"):
        SchemaTool("bad", "", {"type": "object", "properties": {"a": {"type": 3}}})


def test_errors_name_the_spec(tmp_path):
    with pytest.raises(ToolNotFoundError, match="nosuch"):
        ToolRegistry.resolve("nosuch_module_xyz:f", tmp_path)
    with pytest.raises(ToolNotFoundError, match="'nothere'"):
        ToolRegistry.resolve("nothere", tmp_path)
    with pytest.raises(ToolNotFoundError, match="no attribute"):
        ToolRegistry.resolve("fmoe.tools.demo:nope", tmp_path)
    with pytest.raises(ToolNotFoundError, match="missing.py"):
        ToolRegistry.resolve({"file": "missing.py"}, tmp_path)
    with pytest.raises(ToolDefinitionError, match="workspace"):
        ToolRegistry.resolve("files", tmp_path)
    reg = ToolRegistry()
    reg.add_spec("calculator")
    reg.add_spec("calculator")  # the same tool again is harmless
    with pytest.raises(ToolDefinitionError, match="duplicate"):
        reg.add(SchemaTool("calculator"))


def test_per_task_settings_do_not_leak_into_shared_tools(tmp_path):
    """Each registry holds its own copy: a task's max_tool_output never changes the module-level built-in."""
    from fmoe.agent.taskfile import load_task
    from fmoe.tools.builtin_calculator import calculator

    before = calculator.max_output
    for cap, name in ((300, "a.yaml"), (5000, "b.yaml")):
        (tmp_path / name).write_text(f"task: hi\ntools: [calculator, calculator]\nmax_tool_output: {cap}\n")
        reg = load_task(tmp_path / name).registry
        assert reg.names() == ["calculator"]          # listed twice: one tool
        assert reg.get("calculator").max_output == cap
    assert calculator.max_output == before


def test_module_spec_resolves_from_the_task_files_parent(tmp_path, monkeypatch):
    """examples/weather.yaml names `fmoe.tools.demo:get_weather`: it resolves wherever fmoe runs from."""
    from pathlib import Path

    from fmoe.agent.taskfile import load_task

    import sys

    monkeypatch.chdir(tmp_path)
    for m in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        monkeypatch.delitem(sys.modules, m)   # import it afresh: only the task file's location can find it
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != repo])
    task = load_task(repo / "examples" / "weather.yaml")
    assert "get_weather" in task.registry.names()
