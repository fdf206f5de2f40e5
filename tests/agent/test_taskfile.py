"""Task files: validation with file:line: field messages, size parsing, tool resolution."""
import textwrap

import pytest

from fmoe.agent.taskfile import load_task, parse_size
from fmoe.errors import FmoeError, TaskFileError


def write(tmp_path, text, name="task.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def err(path):
    with pytest.raises(TaskFileError) as ei:
        load_task(path)
    assert isinstance(ei.value, FmoeError)
    return str(ei.value)


def test_full_task_file(tmp_path):
    (tmp_path / "ws").mkdir()
    p = write(tmp_path, """
        model: models/demo
        backend: mlx
        memory_budget: 2GiB
        experts_per_token: 4
        sampling: {temperature: 0.7, top_p: 0.9, top_k: 20, seed: 1}
        thinking: false
        system: "You are helpful."
        task: "What is 2+2?"
        tools:
          - calculator
          - fmoe.tools.demo:get_weather
          - files
          - {name: lookup, description: "Look up", parameters: {type: object, properties: {q: {type: string}}}}
        workspace: ./ws
        tool_choice: {name: lookup}
        parallel_tool_calls: false
        max_steps: 4
        max_tokens: 256
        tool_timeout: 5
        transcript: run.jsonl
        expect: {calls: [{name: calculator, arguments: {expression: "2+2"}}], answer: "\\\\b4\\\\b"}
    """)
    t = load_task(p)
    assert t.memory_budget == 2 * 1024 ** 3 and t.backend == "mlx"
    assert t.sampling.top_k == 20 and t.prompts == ["What is 2+2?"]
    assert t.workspace_path == tmp_path / "ws" and t.transcript_path == tmp_path / "run.jsonl"
    assert t.model_path == tmp_path / "models/demo"
    assert t.registry.names() == ["calculator", "get_weather", "list_files", "read_file", "write_file",
                                  "search_files", "lookup"]
    assert t.tool_choice.name == "lookup" and t.expect.calls[0].arguments == {"expression": "2+2"}


def test_defaults(tmp_path):
    t = load_task(write(tmp_path, "tasks: [a, b]\n"))
    assert t.model is None and t.backend == "torch" and t.max_steps == 8 and t.tool_choice == "auto"
    assert t.prompts == ["a", "b"] and len(t.registry) == 0


def test_unknown_field(tmp_path):
    p = write(tmp_path, """
        task: hi
        max_steps: 3
        colour: blue
    """)
    assert err(p) == f"{p}:3: field 'colour': unknown field"


def test_unknown_nested_field(tmp_path):
    p = write(tmp_path, """
        task: hi
        sampling:
          temperature: 0.5
          temprature: 0.1
    """)
    assert err(p) == f"{p}:4: field 'sampling.temprature': unknown field"


def test_wrong_type(tmp_path):
    p = write(tmp_path, """
        # comment
        task: hi
        tools: []

        max_steps: many
    """)
    msg = err(p)
    assert msg.startswith(f"{p}:5: field 'max_steps': Input should be a valid integer")


def test_task_xor_tasks(tmp_path):
    assert "exactly one of 'task' or 'tasks'" in err(write(tmp_path, "max_steps: 2\n"))
    assert "exactly one" in err(write(tmp_path, "task: a\ntasks: [b]\n"))


def test_bad_enum_and_size(tmp_path):
    assert err(write(tmp_path, "task: a\nbackend: cuda\n")).startswith(f"{tmp_path / 'task.yaml'}:2: field 'backend'")
    assert "field 'memory_budget'" in err(write(tmp_path, "task: a\nmemory_budget: lots\n"))
    assert ":2: field 'tool_choice'" in err(write(tmp_path, "task: a\ntool_choice: sometimes\n"))


def test_missing_tool_module(tmp_path):
    p = write(tmp_path, """
        task: hi
        tools:
          - calculator
          - no_such_module_abc:fn
    """)
    msg = err(p)
    assert msg.startswith(f"{p}:4: field 'tools[1]':") and "no_such_module_abc" in msg


def test_tool_choice_must_name_a_tool(tmp_path):
    p = write(tmp_path, "task: hi\ntools: [calculator]\ntool_choice: {name: lookup}\n")
    assert err(p).startswith(f"{p}:3: field 'tool_choice.name': no tool named 'lookup'")


def test_yaml_syntax_and_duplicates(tmp_path):
    assert ":2: YAML syntax error" in err(write(tmp_path, "task: hi\ntools: [a\n"))
    assert err(write(tmp_path, "task: a\ntask: b\n")).endswith(":2: field 'task': duplicate key")
    assert "expected a mapping" in err(write(tmp_path, "- a\n- b\n"))


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("512MiB") == 512 * 1024 ** 2
    assert parse_size("1.5 KB") == 1500 and parse_size("4G") == 4 * 1024 ** 3 and parse_size(10) == 10
    with pytest.raises(ValueError):
        parse_size("3 parsecs")
