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
    for var in ("FMOE_CACHE", "FMOE_CACHE_DIR"):   # fmoe.engine.loader.cache_dir()
        monkeypatch.setenv(var, str(tmp_path / "cache"))
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
