"""The agent loop: chat template + tools -> constrained generation -> parsed calls -> tools run concurrently ->
results fed back as tool messages -> ... until a final answer, max_steps, or the same call three times.

    agent = Agent(model, tokenizer, registry, tool_choice="auto", max_steps=8)
    result = agent.run("What is 2+2?")          # RunResult: answer, steps (ModelStep/ToolStep), tool_calls, stats
    result = agent.chat("and times 3?")         # continues the same conversation
    agent = Agent.from_task(task_file, model, tokenizer)

Prefix reuse: the engine's state (KV + recurrent) cannot be rolled back, so the agent keeps a snapshot of the cache
at the end of each prompt's prefill (and one at the end of the system + tools block). The next prompt is rendered
again from the messages and re-encoded; the longest snapshot whose tokens are a prefix of it is resumed and only the
rest is prefilled. When the previous prompt is not a prefix (the template re-rendered earlier turns differently)
the step records ``prefix_fallback`` and prefills from the best snapshot there is (or from scratch).

Events: ``on_event(kind, **data)`` is called with ``step_start`` (step, max_steps), ``text`` (delta), ``model_step``
(step=ModelStep), ``tool_call`` (step, name, arguments), ``tool_step`` (step=ToolStep) and ``final``
(final=FinalAnswer); the terminal UI (fmoe.agent.ui) is one such listener.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

from fmoe.agent.steps import FinalAnswer, ModelStep, RunResult, ToolStep
from fmoe.agent.transcript import Transcript
from fmoe.errors import FmoeError

REPEAT_LIMIT = 3
_PINNED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> system-prefix snapshots (shared)


# ---------------------------------------------------------------------------------------------------------------
# model resolution / loading
# ---------------------------------------------------------------------------------------------------------------
def _demo_dir() -> Path:
    import fmoe

    return Path(fmoe.__file__).resolve().parent / "demo" / "model"


def default_model_path() -> Path:
    """The embedded demo model (fmoe.engine.loader.resolve_model(None) when the lead's resolver exists)."""
    try:
        from fmoe.engine.loader import resolve_model  # type: ignore[import-not-found]
    except ImportError:
        return _demo_dir()
    return Path(resolve_model(None))


def resolve_model_path(path: str | Path | None) -> Path:
    if path is None:
        return default_model_path()
    try:
        from fmoe.engine.loader import resolve_model  # type: ignore[import-not-found]
    except ImportError:
        return Path(path)
    return Path(resolve_model(str(path)))


def load_model(path: str | Path | None, *, backend: str = "torch", dtype: str = "float32", device: str | None = None,
               experts_per_token: int | None = None, memory_budget: int | None = None,
               io_mode: str = "page-cache", prediction: bool = True):
    """(model, tokenizer, path) for a checkpoint directory (None: the demo model)."""
    from fmoe.engine.model import Model
    from fmoe.storage.stream_layout import is_streaming_layout
    from fmoe.engine.tokenizer import Tokenizer

    p = resolve_model_path(path)
    if not (p / "config.json").exists() and not is_streaming_layout(p):
        raise FmoeError(f"no model at {p} (config.json missing)"
                        + (": the demo model has not been built yet" if path is None else ""))
    stream = None
    if is_streaming_layout(p):
        stream = {"mode": io_mode, "memory_budget": memory_budget}
    model = Model.load(p, backend=backend, dtype=dtype, device=device, experts_per_token=experts_per_token,
                       stream=stream, predict_experts=prediction if stream else False)
    tok_dir = Path(getattr(model.ck, "path", p))
    for cand in (tok_dir, p, _demo_dir() if path is None else p):
        if (cand / "tokenizer.json").exists():
            tok_dir = cand
            break
    return model, Tokenizer.from_dir(tok_dir), p


# ---------------------------------------------------------------------------------------------------------------
# expect verdicts
# ---------------------------------------------------------------------------------------------------------------
def normalize_json(x: Any) -> Any:
    """JSON round trip with sorted keys; integral floats become ints (2.0 == 2)."""
    x = json.loads(json.dumps(x, sort_keys=True, default=str))

    def fix(v):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(w) for k, w in v.items()}
        if isinstance(v, list):
            return [fix(w) for w in v]
        return v
    return fix(x)


def call_matches(expected: dict, actual: dict) -> bool:
    """Same name; every expected argument present with an equal value after JSON normalisation (expected arguments
    are a subset of those given; None = any arguments)."""
    if expected.get("name") != actual.get("name"):
        return False
    exp_args = expected.get("arguments")
    if exp_args is None:
        return True
    got = normalize_json(actual.get("arguments") or {})
    return all(k in got and got[k] == v for k, v in normalize_json(exp_args).items())


def check_expect(expect, calls: list[dict], answer: str | None) -> dict:
    """expect (taskfile.Expect or dict) -> {passed, calls_ok, answer_ok, missing_calls}. Expected calls must appear
    in order (other calls may come between them); the answer regex is searched for in the final answer."""
    if expect is None:
        return {"passed": True}
    e = expect.model_dump() if hasattr(expect, "model_dump") else dict(expect)
    out: dict[str, Any] = {}
    missing = []
    if e.get("calls"):
        i = 0
        for exp in e["calls"]:
            while i < len(calls) and not call_matches(exp, calls[i]):
                i += 1
            if i == len(calls):
                missing.append(exp)
            else:
                i += 1
        out["calls_ok"] = not missing
        out["missing_calls"] = missing
    if e.get("answer") is not None:
        out["answer_ok"] = answer is not None and re.search(e["answer"], answer) is not None
    out["passed"] = all(v for k, v in out.items() if k.endswith("_ok"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the agent
# ---------------------------------------------------------------------------------------------------------------
class Agent:
    def __init__(self, model, tokenizer, tools=None, *, system: str | None = None, tool_choice: Any = "auto",
                 parallel_tool_calls: bool = True, max_calls: int = 4, max_steps: int = 8, max_tokens: int = 512,
                 sampling=None, thinking: bool = False, tool_timeout: float | None = 30.0, max_parallel: int = 4,
                 max_tool_output: int | None = 16 * 1024, grammar_backend: str = "llguidance",
                 call_format: str | None = None, processors: Sequence = (),
                 on_event: Callable[..., None] | None = None, transcript: Transcript | None = None,
                 max_snapshots: int = 4):
        from fmoe.structured.call_format import detect_call_format
        from fmoe.engine.generate import Sampling
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
        self.sampling = sampling or Sampling()
        self.thinking = thinking
        self.tool_timeout, self.max_parallel, self.max_tool_output = tool_timeout, max_parallel, max_tool_output
        self.grammar_backend = grammar_backend
        self.call_format = call_format or detect_call_format(tokenizer.chat_template or "")
        self.extra_processors = list(processors)
        self.on_event = on_event
        self.transcript = transcript
        self.max_snapshots = max_snapshots
        self.schemas = self.registry.openai_schemas()
        self.messages: list[dict] = []
        self.snapshots: list = []          # ModelCache at the end of recent prompts (newest last)
        try:   # snapshots of system + tools blocks, shared by every agent of this model (valid by their tokens)
            self.pinned: list = _PINNED.setdefault(model, [])
        except TypeError:
            self.pinned = []
        self._grammars: dict[str, Any] = {}
        self._last_prompt: list[int] | None = None

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_task(cls, task, model, tokenizer, **overrides) -> "Agent":
        from fmoe.engine.generate import Sampling

        s = task.sampling
        kw = dict(system=task.system, tool_choice=task.tool_choice, parallel_tool_calls=task.parallel_tool_calls,
                  max_steps=task.max_steps, max_tokens=task.max_tokens,
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
        from fmoe.structured.grammar import compile_tool_grammar

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

    # -- prompts and cache reuse -----------------------------------------------------------------------------
    def render(self, messages: list[dict] | None = None) -> str:
        return self.tok.apply_chat_template(messages if messages is not None else self.messages,
                                            tools=self.schemas or None, add_generation_prompt=True,
                                            enable_thinking=self.thinking)

    def _pin_system_prefix(self, ids: list[int]) -> int:
        """Snapshot the system + tools block (shared by every conversation of this model) once; returns how many
        tokens it computed now (0 when a snapshot of it already existed)."""
        text = self.tok.apply_chat_template([*([{"role": "system", "content": self.system}] if self.system else []),
                                             {"role": "user", "content": "x"}], tools=self.schemas or None,
                                            add_generation_prompt=False, enable_thinking=self.thinking)
        cut = text.find("<|im_start|>user")
        if cut <= 0:
            return 0
        pre = self.tok.encode(text[:cut])
        if not pre or len(pre) >= len(ids) or ids[:len(pre)] != pre:
            return 0
        if any(s.tokens == pre for s in self.pinned):
            return 0
        cache = self.model.new_cache()
        for i in range(0, len(pre), 512):
            self.model.forward(pre[i:i + 512], cache)
        self.pinned.append(cache)
        del self.pinned[:-8]
        return len(pre)

    def cache_for(self, ids: list[int]):
        """(cache or None, reused tokens, fallback): the longest snapshot that is a prefix of ``ids``, copied."""
        fallback = False
        if self._last_prompt is not None:
            n = len(self._last_prompt)
            fallback = not (n < len(ids) and ids[:n] == self._last_prompt)
        best = None
        for s in [*self.pinned, *self.snapshots]:
            n = len(s.tokens)
            if n < len(ids) and (best is None or n > len(best.tokens)) and ids[:n] == s.tokens:
                best = s
        if best is None:
            return None, 0, fallback
        return best.snapshot(), len(best.tokens), fallback

    def _keep_snapshot(self, cache) -> None:
        self.snapshots.append(cache)
        del self.snapshots[:-self.max_snapshots]

    def reset(self) -> None:
        """Start a new conversation (the pinned system snapshot is kept; prompt snapshots are dropped)."""
        self.messages = []
        self.snapshots = []
        self._last_prompt = None

    # -- one generation --------------------------------------------------------------------------------------
    def _generate(self, step: int) -> ModelStep:
        from fmoe.structured.processor import ToolCallProcessor
        from fmoe.structured.parser import parse_tool_calls
        from fmoe.engine.generate import Generation

        t0 = time.perf_counter()
        prompt = self.render()
        ids = self.tok.encode(prompt)
        tp = time.perf_counter()
        pinned_now = self._pin_system_prefix(ids)
        pin_s = time.perf_counter() - tp
        cache, reused, fallback = self.cache_for(ids)
        fresh = pinned_now if (pinned_now and reused == pinned_now) else 0
        reused -= fresh   # the system block computed at this step counts as prefilled, not reused
        proc = ToolCallProcessor(self.grammar())
        stop = list(self.tok.eos_token_ids)
        gen = Generation(self.model, ids, max_tokens=self.max_tokens, sampling=self.sampling, stop_ids=stop,
                         processors=[proc, *self.extra_processors], cache=cache,
                         vocab_limit=min(self.tok.vocab_size, self.model.cfg.vocab_size))
        out: list[int] = []
        shown = ""
        for st in gen:
            if not out:  # the cache now holds exactly the prompt: keep it for the next step
                if gen.cache.tokens == ids:
                    self._keep_snapshot(gen.cache.snapshot())
            out.append(st.token_id)
            if self.on_event is not None:
                body = [t for t in out if t not in gen.stop_ids]
                now = self.tok.decode(body)
                if not now.endswith("\ufffd") and len(now) > len(shown):
                    self._emit("text", step=step, delta=now[len(shown):])
                    shown = now
        self._last_prompt = ids
        gs = gen.stats
        prefilled = gs.prefilled_tokens + fresh
        prefill_s = gs.prefill_s + pin_s
        finished = gs.finish_reason in ("stop", "grammar")
        text = self.tok.decode([t for t in out if t not in gen.stop_ids])
        res = parse_tool_calls(text, self.call_format, self.schemas, finished=finished)
        reasoning = ""
        if "</think>" in text:
            reasoning = text.split("</think>", 1)[0].replace("<think>", "").strip()
        elif self.thinking and not finished and not res.calls:
            reasoning = text.replace("<think>", "").strip()
        failure = None
        if res.failure is not None and res.failure.category != "no_call":
            f = res.failure
            failure = {"category": f.category, "message": f.message, "json_path": f.json_path}
        elapsed = time.perf_counter() - t0
        return ModelStep(
            step=step, text=text, content=res.content, reasoning=reasoning,
            calls=[{"name": c.name, "arguments": c.arguments} for c in res.calls], parse_failure=failure,
            tokens=gs.generated_tokens, forced_tokens=gs.forced_tokens, prompt_tokens=len(ids),
            prefilled_tokens=prefilled, reused_tokens=reused, prefix_fallback=fallback,
            finish_reason=gs.finish_reason,
            timings={"prefill_s": prefill_s, "decode_s": gs.decode_s,
                     "prefill_tok_s": prefilled / prefill_s if prefill_s else 0.0,
                     "decode_tok_s": gs.decode_tok_s, "step_s": elapsed},
            engine=dict(gs.engine), prompt_ids=ids, token_ids=out)

    # -- tools -----------------------------------------------------------------------------------------------
    async def _run_calls(self, calls: list[dict]):
        from fmoe.tools.base import ToolResult, cap_output, format_exception

        sem = asyncio.Semaphore(max(1, self.max_parallel))

        async def one(c):
            async with sem:
                try:
                    r = await self.registry.acall(c["name"], c["arguments"], timeout=self.tool_timeout)
                except Exception as e:  # noqa: BLE001 - a tool never stops the agent
                    r = ToolResult(f"tool {c['name']!r} failed: {format_exception(e)}", True)
                if self.max_tool_output is not None:
                    text, cut = cap_output(r.content, self.max_tool_output)
                    if cut:
                        r = ToolResult(text, r.is_error, True, r.elapsed_s)
                return r
        return await asyncio.gather(*(one(c) for c in calls))

    def run_calls(self, calls: list[dict]):
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
        steps: list = []
        seen: dict[str, int] = {}
        answer, stop_reason = None, "max_steps"
        t0 = time.perf_counter()
        n_model = 0
        for step in range(1, self.max_steps + 1):
            self._emit("step_start", step=step, max_steps=self.max_steps)
            ms = self._generate(step)
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
                key = json.dumps([c["name"], normalize_json(c["arguments"])], sort_keys=True)
                seen[key] = seen.get(key, 0) + 1
                repeated |= seen[key] >= REPEAT_LIMIT
            self._add_message(self._assistant_message(ms))
            if repeated:
                stop_reason = "repeated_call"
                break
            for c in ms.calls:
                self._emit("tool_call", step=step, name=c["name"], arguments=c["arguments"])
            results = self.run_calls(ms.calls) if ms.calls else []
            for c, r in zip(ms.calls, results):
                ts = ToolStep(step, c["name"], c["arguments"], r.content, r.is_error, r.truncated, r.elapsed_s)
                steps.append(ts)
                self._log(ts.to_dict())
                self._emit("tool_step", step=ts)
                content = f"Error: {r.content}" if r.is_error and not r.content.startswith("Error") else r.content
                self._add_message({"role": "tool", "name": c["name"], "content": content})
            if ms.parse_failure is not None:
                f = ms.parse_failure
                msg = (f"Error: the tool call was cut off at max_tokens ({self.max_tokens})."
                       if f["category"] == "truncated" else f"Error: invalid tool call: {f['message']}")
                self._add_message({"role": "tool", "content": msg})
        if stop_reason != "final_answer" and stop_reason != "repeated_call":
            stop_reason = "max_steps"
        final = FinalAnswer(answer if stop_reason == "final_answer" else (answer or None), stop_reason, n_model)
        self._log(final.to_dict())
        self._emit("final", final=final)
        result = RunResult(task=user_text, answer=final.answer, stop_reason=stop_reason, steps=steps,
                           messages=[dict(m) for m in self.messages[first_new:]],
                           stats=self._aggregate(steps, time.perf_counter() - t0))
        return result

    def _assistant_message(self, ms: ModelStep) -> dict:
        m: dict[str, Any] = {"role": "assistant", "content": ms.content}
        if ms.reasoning:
            m["reasoning_content"] = ms.reasoning
        if ms.calls:
            m["tool_calls"] = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                               for c in ms.calls]
        return m

    def _add_message(self, m: dict) -> None:
        self.messages.append(m)
        self._log({"type": "message", "message": m})

    def _aggregate(self, steps: list, wall_s: float) -> dict:
        ms = [s for s in steps if isinstance(s, ModelStep)]
        ts = [s for s in steps if isinstance(s, ToolStep)]
        gen = sum(s.tokens for s in ms)
        dec = sum(s.timings.get("decode_s", 0.0) for s in ms)
        pre = sum(s.timings.get("prefill_s", 0.0) for s in ms)
        prefilled = sum(s.prefilled_tokens for s in ms)
        eng = ms[-1].engine if ms else {}
        return {
            "model_steps": len(ms), "tool_calls": len(ts), "tool_errors": sum(t.is_error for t in ts),
            "generated_tokens": gen, "forced_tokens": sum(s.forced_tokens for s in ms),
            "prompt_tokens": sum(s.prompt_tokens for s in ms), "prefilled_tokens": prefilled,
            "reused_tokens": sum(s.reused_tokens for s in ms),
            "prefix_fallbacks": sum(s.prefix_fallback for s in ms),
            "decode_s": dec, "prefill_s": pre, "tool_s": sum(t.elapsed_s for t in ts), "wall_s": wall_s,
            "decode_tok_s": gen / dec if dec else 0.0, "prefill_tok_s": prefilled / pre if pre else 0.0,
            "engine": {k: eng.get(k) for k in ("bytes_read", "cache_hit_rate", "io_wait_s", "prediction_hit_rate",
                                               "experts_per_token", "mode") if k in eng},
        }


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
                              "stats": r.stats, "expect": r.expect})
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results
