"""The example task files on the embedded demo model (fmoe/demo/model): correct calls, answers that match."""
from __future__ import annotations

from pathlib import Path

import pytest

from fmoe.demo import MODEL_DIR as DEMO

REPO = Path(__file__).resolve().parents[2]


def test_demo_model_is_shipped():
    assert (DEMO / "model.safetensors").stat().st_size <= 40 * 2**20


@pytest.fixture(scope="module")
def demo():
    from fmoe.engine.loader import load

    model, tok = load(None)
    return model, tok


@pytest.mark.parametrize("name", ["calculator", "weather", "units", "files"])
def test_example_task_passes(demo, name, monkeypatch):
    from fmoe.agent.loop import run_task
    from fmoe.agent.taskfile import load_task

    monkeypatch.chdir(REPO)   # fmoe.tools.demo:get_weather resolves from the repository root
    task = load_task(REPO / "examples" / f"{name}.yaml")
    model, tok = demo
    (r,) = run_task(task, model, tok)
    assert r.expect["passed"], (r.expect, r.tool_calls, r.answer)
    for s in r.model_steps:
        assert s.parse_failure is None
    if len(r.model_steps) > 1:
        s = r.model_steps[1]
        assert not s.prefix_fallback and s.reused_tokens == r.model_steps[0].prompt_tokens
