"""Issue #15: a remote model (fmoe/agent/remote.py) against the real ``fmoe serve`` -- ``fmoe run`` with
``model: openai:http://127.0.0.1:PORT/v1#fmoe-demo`` and ``fmoe eval --model openai:...``, through the real CLI, the
``openai`` SDK and HTTP, against the demo model served by tests/server/conftest.py's ``server`` fixture."""
from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("openai")


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch):
    for k in ("FMOE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)


def spec(server) -> str:
    return f"openai:{server.url}/v1#fmoe-demo"


def test_fmoe_run_task_file_against_serve(server, tmp_path, capsys):
    from fmoe.cli import main

    task = tmp_path / "task.yaml"
    task.write_text(textwrap.dedent(f"""\
        model: "{spec(server)}"
        system: "You are a helpful assistant. Use the tools when they help."
        task: "What is 1234 * 5678?"
        tools: [calculator]
        max_steps: 4
        max_tokens: 256
        transcript: run.jsonl
        expect:
          calls: [{{name: calculator, arguments: {{expression: "1234 * 5678"}}}}]
          answer: "7006652"
        """))
    assert main(["run", str(task), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["passed"] is True, out
    assert out["model"] == spec(server)
    assert [(c["name"], c["arguments"], c["result"]) for c in out["tool_calls"]] == [
        ("calculator", {"expression": "1234 * 5678"}, "7006652")]
    assert "7006652" in out["answer"]
    kinds = [json.loads(x)["type"] for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert "tool_step" in kinds and kinds[-1] == "result"


def test_fmoe_eval_remote_against_serve(server, tmp_path):
    from fmoe.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""\
        name: serve-mini
        cases:
          - id: calc
            messages:
              - {role: system, content: "You are a helpful assistant. Use the tools when they help."}
              - {role: user, content: "What is 1234 * 5678?"}
            tools: [calculator, get_weather]
            expect: {calls: [[{name: calculator, arguments: {expression: "1234 * 5678"}}]]}
          - id: weather
            messages:
              - {role: system, content: "You are a helpful assistant. Use the tools when they help."}
              - {role: user, content: "What is the weather in Tokyo?"}
            tools: [calculator, get_weather]
            expect: {calls: [[{name: get_weather, arguments: {city: Tokyo}}]]}
        """))
    out = tmp_path / "out"
    assert main(["eval", str(suite), "--model", spec(server), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["remote"] is True and res["cases"] == 2
    (v,) = res["variants"]
    assert v["variant"] == "remote" and v["bits"] is None and v["grammar"] is None and v["kl_vs_reference"] is None
    assert v["parse_rate"] == 1.0 and v["schema_valid_rate"] == 1.0, res["failures"]
    assert v["tool_accuracy"] == 1.0 and v["argument_accuracy"] == 1.0, res["failures"]
    assert res["failure_counts"].get("remote", {}) == {}
