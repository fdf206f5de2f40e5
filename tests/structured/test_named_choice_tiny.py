"""Issue #16 bar: held-out JSON Schemas (the JSONSchemaBench subset in tests/data) as schema-only tools with a named
tool_choice, on a small random-weight model: every schema the grammar accepts yields exactly one valid call, no free
text instead of the call, no call cut by the budget (a schema whose shortest call exceeds the call budget is refused
up front, with the numbers)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from fmoe.bench.grammar import SPLITS, tool_for_schema
from fmoe.structured.grammar import GrammarError, UnsupportedSchemaError

DATA = Path(__file__).resolve().parents[1] / "data" / "extdata" / "maskbench"
PER_SPLIT = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import build_hf
    from fmoe.engine.loader import load

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("named") / "tiny"
    build_hf(d, "qwen3_5_a")
    model, tok = load(d)
    yield model, tok
    torch.set_num_threads(threads)


def test_named_choice_yields_exactly_one_valid_call(tiny):
    import json

    from fmoe.agent.loop import Agent
    from fmoe.tools.schema_tools import SchemaTool

    model, tok = tiny
    t0 = time.perf_counter()
    ran = refused = unsupported = closed = 0
    for split in SPLITS:
        f = DATA / f"{split}.jsonl"
        if not f.exists():
            continue
        for line in f.read_text().splitlines()[:PER_SPLIT]:
            tool, _ = tool_for_schema(json.loads(line)["schema"])
            try:
                agent = Agent(model, tok, [SchemaTool.from_spec(tool)], tool_choice={"name": "f"},
                              parallel_tool_calls=False, max_tokens=16, max_call_tokens=200)
                step = agent.turn([{"role": "user", "content": "call f"}])
            except UnsupportedSchemaError:
                unsupported += 1
                continue
            except GrammarError as e:
                assert "max_call_tokens=200" in str(e) and "tokens" in str(e)
                refused += 1
                continue
            ran += 1
            closed += step.closed_early
            assert step.parse_failure is None, (split, step.parse_failure, step.text[-300:])
            assert len(step.calls) == 1 and step.calls[0].name == "f", (split, step.text[-300:])
            assert step.content.strip() == "" and step.text.startswith("<tool_call>"), (split, step.text[:100])
            assert step.finish_reason in ("stop", "grammar"), (split, step.finish_reason)
            assert step.tokens <= 16 + 200
    print(f"named-choice bar: {ran} schemas ran, {refused} refused up front, {unsupported} unsupported, "
          f"{closed} calls closed early")
    assert ran >= 20 and refused <= ran // 4, (ran, refused, unsupported)
    assert time.perf_counter() - t0 < 120
