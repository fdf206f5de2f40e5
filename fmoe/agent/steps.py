"""Typed records of one agent run (smolagents style): what the model produced at each step, each tool call and
its result, and the final answer. Every record has ``to_dict()`` (JSON-ready) for the transcript and ``--json``.

    ModelStep   one generation: text, parsed calls, parse failure, token counts (prompt / prefilled / reused),
                timings and engine stats
    ToolStep    one tool call and its result
    FinalAnswer why and how the run ended
    RunResult   everything about one task: answer, steps, tool calls, messages, aggregate stats, expect verdict
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fmoe.engine.stats import EngineStats
from fmoe.structured.parser import Failure, ToolCall


@dataclass
class ModelStep:
    step: int
    text: str                              # the generated assistant turn (decoded, end-of-turn token removed)
    content: str = ""                      # text outside the calls and the thinking block
    reasoning: str = ""                    # the thinking block's text (thinking mode)
    calls: list[ToolCall] = field(default_factory=list)     # parsed, schema-checked calls
    parse_failure: Failure | None = None   # why the output is not (only) valid calls; None also for "no call"
    tokens: int = 0                        # generated tokens (sampled + forced)
    forced_tokens: int = 0                 # appended by the grammar without sampling
    prompt_tokens: int = 0                 # the whole rendered prompt
    prefilled_tokens: int = 0              # prompt tokens computed at this step
    reused_tokens: int = 0                 # prompt tokens whose state came from a cached snapshot
    prefix_fallback: bool = False          # the previous prompt was not a prefix of this one: full prefill
    finish_reason: str = ""                # stop | length | grammar
    closed_early: int = 0                  # calls the grammar steered to their end because the token budget ran out
    decode_passes: int = 0                 # forward passes after the prefill (fast-forwarded tokens share one)
    decode_bytes: int = 0                  # expert bytes read from the streaming layout during those passes
    timings: dict = field(default_factory=dict)   # prefill_s, decode_s, prefill_tok_s, decode_tok_s, step_s
    engine: EngineStats = field(default_factory=EngineStats)   # what the engine did during this step
    prompt_ids: list[int] = field(default_factory=list, repr=False)   # not written to transcripts
    token_ids: list[int] = field(default_factory=list, repr=False)

    kind = "model_step"

    def to_dict(self, ids: bool = False) -> dict:
        d = asdict(self)
        d["engine"] = self.engine.to_dict()
        if not ids:
            d.pop("prompt_ids")
            d.pop("token_ids")
        d["type"] = self.kind
        return d


@dataclass
class ToolStep:
    step: int
    name: str
    arguments: dict
    result: str
    is_error: bool = False
    truncated: bool = False
    elapsed_s: float = 0.0

    kind = "tool_step"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["type"] = self.kind
        return d


@dataclass
class FinalAnswer:
    answer: str | None
    stop_reason: str      # final_answer | max_steps | repeated_call | error
    steps: int

    kind = "final"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["type"] = self.kind
        return d


@dataclass
class RunResult:
    task: str
    answer: str | None
    stop_reason: str
    steps: list = field(default_factory=list)          # ModelStep | ToolStep, in order
    messages: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    expect: dict | None = None                         # verdict of the task's expect (see loop.check_expect)

    @property
    def model_steps(self) -> list[ModelStep]:
        return [s for s in self.steps if isinstance(s, ModelStep)]

    @property
    def tool_steps(self) -> list[ToolStep]:
        return [s for s in self.steps if isinstance(s, ToolStep)]

    @property
    def tool_calls(self) -> list[dict]:
        return [{"name": t.name, "arguments": t.arguments, "result": t.result, "is_error": t.is_error}
                for t in self.tool_steps]

    @property
    def passed(self) -> bool | None:
        return None if self.expect is None else bool(self.expect.get("passed"))

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "task": self.task,
            "answer": self.answer,
            "stop_reason": self.stop_reason,
            "steps": len(self.model_steps),
            "tool_calls": self.tool_calls,
            "stats": self.stats,
            "step_details": [s.to_dict() for s in self.model_steps],
        }
        if self.expect is not None:
            d["passed"] = self.passed
            d["expect"] = self.expect
        return d
