"""Issue #16 item 3: a tool schema the grammar cannot enforce is refused when the task file or the suite is
loaded (before any model is loaded), naming the tool and the keyword."""
from __future__ import annotations

import pytest

from fmoe.errors import TaskFileError
from fmoe.eval.suite import SuiteError, loads_suite

BAD_TOOL = """
  - name: lookup
    description: find
    parameters:
      type: object
      properties:
        tags: {type: array, items: {type: string}, uniqueItems: true}
"""


def test_task_file_refuses_unsupported_keyword_at_load(tmp_path, monkeypatch):
    from fmoe.agent.taskfile import loads_task
    import fmoe.engine.loader as loader

    def boom(*a, **k):   # nothing may be loaded
        raise AssertionError("model loaded")
    monkeypatch.setattr(loader, "load", boom, raising=False)
    text = "task: hi\ntools:" + BAD_TOOL
    with pytest.raises(TaskFileError, match=r"tools\[0\].*'lookup'.*uniqueItems"):
        loads_task(text, path=tmp_path / "t.yaml")


def test_task_file_refuses_xml_only_keyword_for_the_demo_model(tmp_path):
    from fmoe.agent.taskfile import loads_task

    text = """task: hi
tools:
  - name: pick
    parameters: {type: object, properties: {a: {type: string}}, anyOf: [{required: [a]}]}
"""
    with pytest.raises(TaskFileError, match=r"'pick'.*anyOf"):   # the demo model's template is XML
        loads_task(text, path=tmp_path / "t.yaml")


def test_suite_refuses_unsupported_keyword_at_load():
    text = """name: s
tools:
  lookup:
    name: lookup
    parameters: {type: object, properties: {x: {not: {type: string}}}}
cases:
  - id: c1
    tools: [lookup]
    messages: [{role: user, content: hi}]
"""
    with pytest.raises(SuiteError, match=r"'lookup'.*'not'"):
        loads_suite(text)
