"""Typed records of one agent run (smolagents style): what the model produced at each step, each tool call and
its result, and the final answer. Every record has ``to_dict()`` (JSON-ready) for the transcript and ``--json``.

    ModelStep   one generation: text, parsed calls, parse failure, token counts (prompt / prefilled / reused),
                timings and engine stats
    ToolStep    one tool call and its result
    FinalAnswer why and how the run ended
    RunStats    the totals of a run: steps, tokens, times, the engine's windows
    RunResult   everything about one task: answer, steps, tool calls, messages, RunStats, expect verdict
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
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
class RunStats:
    """The totals of one run (or, with :meth:`total`, of several): steps, tokens, times and the engine's windows."""
    model_steps: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_threads_abandoned: int = 0        # synchronous tools that timed out in this run (their threads go on)
    tool_threads_running: int = 0          # such threads of any run still running at its end
    calls_closed_early: int = 0
    generated_tokens: int = 0
    forced_tokens: int = 0
    prompt_tokens: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    prefix_fallbacks: int = 0
    decode_s: float = 0.0
    prefill_s: float = 0.0
    tool_s: float = 0.0
    wall_s: float = 0.0
    engine: EngineStats = field(default_factory=EngineStats)

    @property
    def decode_tok_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s else 0.0

    @classmethod
    def of_steps(cls, steps: list, wall_s: float, abandoned: int = 0, running: int = 0) -> "RunStats":
        ms = [s for s in steps if isinstance(s, ModelStep)]
        ts = [s for s in steps if isinstance(s, ToolStep)]
        return cls(model_steps=len(ms), tool_calls=len(ts), tool_errors=sum(t.is_error for t in ts),
                   tool_threads_abandoned=abandoned, tool_threads_running=running,
                   calls_closed_early=sum(s.closed_early for s in ms), generated_tokens=sum(s.tokens for s in ms),
                   forced_tokens=sum(s.forced_tokens for s in ms), prompt_tokens=sum(s.prompt_tokens for s in ms),
                   prefilled_tokens=sum(s.prefilled_tokens for s in ms),
                   reused_tokens=sum(s.reused_tokens for s in ms),
                   prefix_fallbacks=sum(s.prefix_fallback for s in ms),
                   decode_s=sum(s.timings.get("decode_s", 0.0) for s in ms),
                   prefill_s=sum(s.timings.get("prefill_s", 0.0) for s in ms),
                   tool_s=sum(t.elapsed_s for t in ts), wall_s=wall_s,
                   engine=EngineStats.total([s.engine for s in ms]))   # this run's windows, not the process's

    @classmethod
    def total(cls, runs: list["RunStats"]) -> "RunStats":
        out = cls(engine=EngineStats.total([r.engine for r in runs]))
        for r in runs:
            for f in fields(cls):
                if f.name not in ("engine", "tool_threads_running"):
                    setattr(out, f.name, getattr(out, f.name) + getattr(r, f.name))
        out.tool_threads_running = runs[-1].tool_threads_running if runs else 0
        return out

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "engine"}
        d.update(decode_tok_s=self.decode_tok_s, prefill_tok_s=self.prefill_tok_s)
        eng = self.engine.to_dict()
        d["engine"] = {k: eng.get(k) for k in ("bytes_read", "cache_hit_rate", "io_wait_s", "prediction_hit_rate",
                                               "experts_per_token", "mode") if k in eng}
        return d


@dataclass
class RunResult:
    task: str
    answer: str | None
    stop_reason: str
    steps: list = field(default_factory=list)          # ModelStep | ToolStep, in order
    messages: list[dict] = field(default_factory=list)
    stats: RunStats = field(default_factory=RunStats)
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
            "stats": self.stats.to_dict(),
            "step_details": [s.to_dict() for s in self.model_steps],
        }
        if self.expect is not None:
            d["passed"] = self.passed
            d["expect"] = self.expect
        return d
