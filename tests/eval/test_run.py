"""A small `fmoe eval` sweep on a tiny random model: constrained output always parses and validates."""
import json

import pytest

from fmoe.eval.report import write_report
from fmoe.eval.run import METRICS, plan_variants, run_eval
from fmoe.eval.suite import loads_suite

SUITE = """\
name: tiny
max_tokens: 100
tools:
  pick:
    name: pick
    description: pick a colour and a count
    parameters:
      type: object
      properties:
        colour: {type: string, enum: [red, green, blue]}
      required: [colour]
      additionalProperties: false
cases:
  - id: a
    tools: [pick]
    tool_choice: required
    messages: [{role: user, content: "pick red 2"}]
    expect: {calls: [[{name: pick, arguments: {colour: red}}]]}
  - id: b
    kind: other
    tools: [pick]
    tool_choice: required
    messages: [{role: user, content: "pick blue"}]
    reference: [{role: assistant, content: "ok"}]
    expect: {calls: [[{name: pick, arguments: {colour: blue}}]]}
"""


def test_plan_variants():
    v = plan_variants([2, 4], [None], [True, False])
    assert len(v) == 4
    v = plan_variants([2, 3, 4, 8], [2, 4, 8], [True], cross=True)
    assert [(x.bits, x.experts_per_token) for x in v] == [(2, 2), (3, 2), (4, 2), (8, 2), (4, 4), (4, 8)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import build_hf

    d = tmp_path_factory.mktemp("tiny")
    build_hf(d, "qwen3_5_a")
    return d


def test_small_sweep(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FMOE_CACHE_DIR", str(tmp_path / "cache"))   # fmoe.paths.cache_dir()
    suite = loads_suite(SUITE, name="tiny.yaml")
    variants = plan_variants([8], [None], [True, False])
    res = run_eval(suite, tiny, variants, tmp_path / "out", progress=False, kl_n=1, kl_max_len=48)
    assert (tmp_path / "cache" / "variants").is_dir()
    paths = write_report(res, tmp_path / "out", with_plots=False)
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data["variants"]) == 2
    for v in data["variants"]:
        for k in ("bits", "experts_per_token", "grammar", *METRICS):
            assert k in v
    on = next(v for v in data["variants"] if v["grammar"])
    assert on["parse_rate"] == 1.0 and on["schema_valid_rate"] == 1.0
    assert on["call_attempt_rate"] == 1.0
    assert on["kl_vs_reference"] == 0.0 and on["bytes_per_token"] > 0 and on["tok_s"] > 0
    assert (tmp_path / "out" / "failures.json").exists() and any(p.name == "results.md" for p in paths)
    assert "| bits |" in (tmp_path / "out" / "results.md").read_text()


SAME_TASK_SUITE = """\
name: same-task
max_tokens: 160
loop: true
max_steps: 4
cases:
  - id: weather
    tools: [calculator, get_weather, convert_units]
    messages: [{role: user, content: "What's the weather in Madrid in fahrenheit?"}]
    expect: {calls: [[{name: get_weather, arguments: {city: Madrid, unit: fahrenheit}}]], answer: ["71.6"]}
"""

SAME_TASK_FILE = """\
task: "What's the weather in Madrid in fahrenheit?"
tools: [calculator, "fmoe.tools.demo:get_weather", "fmoe.tools.demo:convert_units"]
max_tokens: 160
max_steps: 4
"""


def test_eval_case_and_run_of_the_same_task_make_the_same_calls(tmp_path):
    """`fmoe eval` and `fmoe run` go through the same agent turn: on the demo model, a suite case and a task file with
    the same prompt and tools produce the same calls, results and answer."""
    from fmoe.agent.loop import run_task
    from fmoe.agent.taskfile import loads_task
    from fmoe.engine.loader import load
    from fmoe.eval.run import Acc, run_case

    model, tok = load(None, quiet=True)
    suite = loads_suite(SAME_TASK_SUITE, name="same.yaml")
    acc = Acc()
    rec = run_case(model, tok, suite, suite.cases[0], True, "xml", acc, {}, "4bit")
    [ran] = run_task(loads_task(SAME_TASK_FILE, path=tmp_path / "t.yaml"), model, tok)
    run_calls = [{"name": c.name, "arguments": c.arguments} for s in ran.model_steps for c in s.calls]
    assert run_calls and run_calls[0] == {"name": "get_weather", "arguments": {"city": "Madrid", "unit": "fahrenheit"}}
    assert rec["calls"] == run_calls and acc.turns == len(ran.model_steps) and acc.scored == 1
    assert rec["tool_ok"] and rec["args_ok"] and rec["answer"] == ran.answer and rec["answer_ok"]
    # and the same turn under the hood: the eval's first-turn output is the run's first model step
    assert rec["output"] == ran.model_steps[0].text
