"""The agent loop: turns (fmoe.agent.turn) -> parsed calls -> tools run concurrently -> results fed back as tool
messages -> ... until a final answer, max_steps, or the same call three times.

    agent = Agent(model, tokenizer, registry, tool_choice="auto", max_steps=8)
    result = agent.run("What is 2+2?")          # RunResult: answer, steps (ModelStep/ToolStep), tool_calls, stats
    result = agent.chat("and times 3?")         # continues the same conversation
    result = agent.run_messages(messages)       # continues a given conversation (an eval case's messages)
    step = agent.turn(messages)                 # one ModelStep, no tools run
    agent = Agent.from_task(task_file, model, tokenizer)

Across turns the engine keeps its KV and recurrent state and prefills only new tokens (fmoe.agent.turn.PrefixCache).

Events: ``on_event(kind, **data)`` is called with ``step_start`` (step, max_steps), ``text`` (delta), ``model_step``
(step=ModelStep), ``tool_call`` (step, name, arguments), ``tool_step`` (step=ToolStep) and ``final``
(final=FinalAnswer); the terminal UI (fmoe.agent.ui) is one such listener.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, Sequence

from fmoe.agent.expect import check_expect, normalize_json
from fmoe.agent.steps import FinalAnswer, ModelStep, RunResult, RunStats, ToolStep
from fmoe.agent.transcript import Transcript
from fmoe.agent.turn import PrefixCache, TurnSettings, run_turn

REPEAT_LIMIT = 3


# ---------------------------------------------------------------------------------------------------------------
# the agent
# ---------------------------------------------------------------------------------------------------------------
class Agent:
    def __init__(self, model, tokenizer, tools=None, *, system: str | None = None, tool_choice: Any = "auto",
                 parallel_tool_calls: bool = True, max_calls: int = 4, max_steps: int = 8, max_tokens: int = 512,
                 max_call_tokens: int | None = 1024,
                 sampling=None, thinking: bool = False, tool_timeout: float | None = 30.0, max_parallel: int = 4,
                 max_tool_output: int | None = 16 * 1024, grammar_backend: str = "llguidance",
                 constrained: bool = True, call_format: str | None = None, processors: Sequence = (),
                 on_event: Callable[..., None] | None = None, transcript: Transcript | None = None,
                 max_snapshots: int = 4):
        from fmoe.engine.generate import Sampling
        from fmoe.structured.formats import detect_call_format
        from fmoe.tools.registry import ToolRegistry

        self.model, self.tok = model, tokenizer
        if tools is None:
            tools = ToolRegistry()
        elif not isinstance(tools, ToolRegistry):
            reg = ToolRegistry()
            for t in tools:
                reg.add(t)
            tools = reg
        self.registry = tools
        self.system = system
        if hasattr(tool_choice, "model_dump"):
            tool_choice = tool_choice.model_dump()
        self.tool_choice = tool_choice
        self.parallel_tool_calls, self.max_calls = parallel_tool_calls, max_calls
        self.max_steps, self.max_tokens = max_steps, max_tokens
        self.max_call_tokens = max_call_tokens    # a started call may run past max_tokens up to this (TurnSettings)
        self.sampling = sampling or Sampling()
        self.thinking = thinking
        self.tool_timeout, self.max_parallel, self.max_tool_output = tool_timeout, max_parallel, max_tool_output
        self.grammar_backend = grammar_backend
        self.constrained = constrained
        self.call_format = call_format or detect_call_format(getattr(tokenizer, "chat_template", None) or "")
        self.extra_processors = list(processors)
        self.on_event = on_event
        self.transcript = transcript
        self.schemas = self.registry.openai_schemas()
        self.messages: list[dict] = []
        self.prefix = PrefixCache(model, max_snapshots)
        self._grammars: dict[str, Any] = {}

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_task(cls, task, model, tokenizer, **overrides) -> "Agent":
        from fmoe.engine.generate import Sampling

        s = task.sampling
        kw = dict(system=task.system, tool_choice=task.tool_choice, parallel_tool_calls=task.parallel_tool_calls,
                  max_steps=task.max_steps, max_tokens=task.max_tokens,
                  max_call_tokens=getattr(task, "max_call_tokens", 1024),
                  sampling=Sampling(s.temperature, s.top_p, s.top_k, s.seed, s.min_p), thinking=task.thinking,
                  tool_timeout=task.tool_timeout, max_tool_output=task.max_tool_output)
        kw.update(overrides)
        return cls(model, tokenizer, task.registry, **kw)

    # -- events ----------------------------------------------------------------------------------------------
    def _emit(self, kind: str, **data) -> None:
        if self.on_event is not None:
            self.on_event(kind, **data)

    def _log(self, record: dict) -> None:
        if self.transcript is not None:
            self.transcript.write(record)

    # -- grammar ---------------------------------------------------------------------------------------------
    def grammar(self):
        """The compiled grammar of this agent's tools and tool choice (None when generation is unconstrained)."""
        from fmoe.structured.grammar import compile_tool_grammar

        if not self.constrained:
            return None
        key = json.dumps(self.tool_choice, sort_keys=True)
        g = self._grammars.get(key)
        if g is None:
            g = compile_tool_grammar(self.schemas, call_format=self.call_format,
                                     tool_choice=self.tool_choice if self.schemas else "none",
                                     parallel_calls=self.parallel_tool_calls,
                                     max_calls=self.max_calls if self.parallel_tool_calls else 1,
                                     thinking=self.thinking, backend=self.grammar_backend, tokenizer=self.tok,
                                     vocab_size=self.model.cfg.vocab_size)
            self._grammars[key] = g
        return g

    # -- prompts ---------------------------------------------------------------------------------------------
    def render(self, messages: list[dict] | None = None) -> str:
        return self.tok.apply_chat_template(messages if messages is not None else self.messages,
                                            tools=self.schemas or None, add_generation_prompt=True,
                                            enable_thinking=self.thinking)

    def reset(self) -> None:
        """Start a new conversation (the pinned system snapshot is kept; prompt snapshots are dropped)."""
        self.messages = []
        self.prefix.reset()

    # -- one turn --------------------------------------------------------------------------------------------
    def turn(self, messages: list[dict] | None = None, step: int = 1) -> ModelStep:
        """One assistant turn on ``messages`` (default: this conversation's); no tool is run."""
        settings = TurnSettings(max_tokens=self.max_tokens, max_call_tokens=self.max_call_tokens,
                                sampling=self.sampling, thinking=self.thinking,
                                call_format=self.call_format, processors=tuple(self.extra_processors))
        def emit_text(delta: str) -> None:
            self._emit("text", step=step, delta=delta)
        on_text = emit_text if self.on_event is not None else None
        if getattr(self.model, "is_remote", False):   # an OpenAI-compatible endpoint (fmoe.agent.remote)
            return self.model.turn(self.messages if messages is None else messages, self.schemas, settings,
                                   tool_choice=self.tool_choice, parallel_tool_calls=self.parallel_tool_calls,
                                   step=step, on_text=on_text)
        return run_turn(self.model, self.tok, self.messages if messages is None else messages, self.schemas,
                        settings, self.prefix, grammar=self.grammar(), step=step, on_text=on_text)

    # -- tools -----------------------------------------------------------------------------------------------
    async def _run_calls(self, calls: list):
        from fmoe.tools.base import ToolResult, cap_output, format_exception

        sem = asyncio.Semaphore(max(1, self.max_parallel))

        async def one(c):
            async with sem:
                try:
                    r = await self.registry.acall(c.name, c.arguments, timeout=self.tool_timeout)
                except Exception as e:  # noqa: BLE001 - a tool never stops the agent
                    r = ToolResult(f"tool {c.name!r} failed: {format_exception(e)}", True)
                if self.max_tool_output is not None:
                    text, cut = cap_output(r.content, self.max_tool_output)
                    if cut:
                        r = ToolResult(text, r.is_error, True, r.elapsed_s)
                return r
        return await asyncio.gather(*(one(c) for c in calls))

    def run_calls(self, calls: list):
        """Run ToolCalls concurrently (at most max_parallel at once); ToolResults in the same order."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run_calls(calls))
        from concurrent.futures import ThreadPoolExecutor   # called from async code: a private loop in a thread

        with ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, self._run_calls(calls)).result()

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self, task: str) -> RunResult:
        """A new conversation: [system], user(task), then steps until done."""
        self.reset()
        if self.system:
            self.messages.append({"role": "system", "content": self.system})
        return self.chat(task)

    def chat(self, user_text: str) -> RunResult:
        """Add a user message to the current conversation and run steps until done."""
        if not self.messages and self.system:
            self.messages.append({"role": "system", "content": self.system})
        self._log({"type": "task", "task": user_text, "tools": self.registry.names(),
                   "tool_choice": self.tool_choice, "call_format": self.call_format, "max_steps": self.max_steps,
                   "max_tokens": self.max_tokens, "thinking": self.thinking})
        first_new = len(self.messages)
        self._add_message({"role": "user", "content": user_text})
        return self._loop(user_text, first_new)

    def run_messages(self, messages: list[dict]) -> RunResult:
        """A new conversation that starts from ``messages`` (ending where the assistant speaks next)."""
        self.reset()
        self.messages = [dict(m) for m in messages]
        last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        self._log({"type": "task", "messages": self.messages, "tools": self.registry.names(),
                   "tool_choice": self.tool_choice, "call_format": self.call_format, "max_steps": self.max_steps,
                   "max_tokens": self.max_tokens, "thinking": self.thinking})
        return self._loop(last_user, len(self.messages))

    def _loop(self, task: str, first_new: int) -> RunResult:
        steps: list = []
        seen: dict[str, int] = {}
        answer, stop_reason = None, "max_steps"
        t0 = time.perf_counter()
        from fmoe.tools.decorator import abandoned_tool_threads

        self._abandoned_at_start = abandoned_tool_threads()["total"]
        n_model = 0
        for step in range(1, self.max_steps + 1):
            self._emit("step_start", step=step, max_steps=self.max_steps)
            ms = self.turn(step=step)
            n_model = step
            steps.append(ms)
            self._log(ms.to_dict())
            self._emit("model_step", step=ms)
            answer = ms.content
            if not ms.calls and ms.parse_failure is None:
                required = self.tool_choice not in ("auto", "none") and bool(self.schemas)
                if required and ms.finish_reason == "length":
                    self._add_message({"role": "assistant", "content": ms.content})
                    self._add_message({"role": "tool", "content": f"Error: the turn reached max_tokens "
                                       f"({self.max_tokens}) before a tool call; call a tool now."})
                    continue
                self._add_message(self._assistant_message(ms))
                stop_reason = "final_answer"
                break
            repeated = False
            for c in ms.calls:
                key = json.dumps([c.name, normalize_json(c.arguments)], sort_keys=True)
                seen[key] = seen.get(key, 0) + 1
                repeated |= seen[key] >= REPEAT_LIMIT
            self._add_message(self._assistant_message(ms))
            if repeated:
                stop_reason = "repeated_call"
                break
            for c in ms.calls:
                self._emit("tool_call", step=step, name=c.name, arguments=c.arguments)
            results = self.run_calls(ms.calls) if ms.calls else []
            for c, r in zip(ms.calls, results):
                ts = ToolStep(step, c.name, c.arguments, r.content, r.is_error, r.truncated, r.elapsed_s)
                steps.append(ts)
                self._log(ts.to_dict())
                self._emit("tool_step", step=ts)
                content = f"Error: {r.content}" if r.is_error and not r.content.startswith("Error") else r.content
                self._add_message({"role": "tool", "name": c.name, "content": content})
            if ms.parse_failure is not None:
                f = ms.parse_failure
                msg = (f"Error: the tool call was cut off at max_tokens ({self.max_tokens})."
                       if f.category == "truncated" else f"Error: invalid tool call: {f.message}")
                self._add_message({"role": "tool", "content": msg})
        if stop_reason != "final_answer" and stop_reason != "repeated_call":
            stop_reason = "max_steps"
        final = FinalAnswer(answer if stop_reason == "final_answer" else (answer or None), stop_reason, n_model)
        self._log(final.to_dict())
        self._emit("final", final=final)
        result = RunResult(task=task, answer=final.answer, stop_reason=stop_reason, steps=steps,
                           messages=[dict(m) for m in self.messages[first_new:]],
                           stats=self._aggregate(steps, time.perf_counter() - t0))
        return result

    def _assistant_message(self, ms: ModelStep) -> dict:
        m: dict[str, Any] = {"role": "assistant", "content": ms.content}
        if ms.reasoning:
            m["reasoning_content"] = ms.reasoning
        if ms.calls:
            m["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                               for c in ms.calls]
        return m

    def _add_message(self, m: dict) -> None:
        self.messages.append(m)
        self._log({"type": "message", "message": m})

    def _aggregate(self, steps: list, wall_s: float) -> RunStats:
        from fmoe.tools.decorator import abandoned_tool_threads

        threads = abandoned_tool_threads()
        return RunStats.of_steps(steps, wall_s, abandoned=threads["total"] - getattr(self, "_abandoned_at_start", 0),
                                 running=len(threads["running"]))


def run_task(task, model, tokenizer, *, on_event=None, transcript: Transcript | None = None,
             on_result: Callable[[RunResult], None] | None = None, **overrides) -> list[RunResult]:
    """Run every prompt of a TaskFile (each a fresh conversation, sharing the model and the system snapshot);
    each result carries the expect verdict when the task has one."""
    agent = Agent.from_task(task, model, tokenizer, on_event=on_event, transcript=transcript, **overrides)
    results = []
    for prompt in task.prompts:
        r = agent.run(prompt)
        if task.expect is not None:
            r.expect = check_expect(task.expect, r.tool_calls, r.answer)
        if transcript is not None:
            transcript.write({"type": "result", "task": prompt, "answer": r.answer, "stop_reason": r.stop_reason,
                              "stats": r.stats.to_dict(), "expect": r.expect})
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results
