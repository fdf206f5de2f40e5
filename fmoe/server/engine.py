"""The single engine behind the server: requests wait in a bounded queue and one worker thread runs them, one turn
at a time, through fmoe.agent.turn.run_turn with a server-wide PrefixCache.

    engine = ServerEngine(model, tok, name="fmoe-demo", max_queue=8)
    engine.start()
    turn = engine.prepare(TurnRequest(messages, tools, tool_choice="auto"))   # RequestError: a 400 naming the field
    engine.count_tokens(TurnRequest(messages, tools))   # the prompt's tokens only (no context check, no grammar)
    job = engine.submit(turn, loop)                  # QueueFull when max_queue requests already wait (-> 429)
    async for kind, value in job.events():           # ("start", cached_tokens) once the prompt's reused prefix
        ...                                          # is known, ("text", delta) ("call", ToolCall),
                                                     # ("done", TurnResult) or ("error", exception)
    job.cancel()                                     # the client went away: the turn stops at its next token

Prefix reuse: the PrefixCache keeps snapshots of the engine state at the end of recent prompts (any conversation)
and the pinned system + tools block, so a conversation's next request prefills only its new tokens; the reused count
is ``TurnResult.cached_tokens``. Token budget: ``prepare`` clips max_tokens and the call budget (max_call_tokens)
so that the prompt plus everything the turn may generate (a call started at the last token of max_tokens runs up to
max_call_tokens more) fits in the model's context. Grammars (tools x tool choice, or a response JSON Schema) are
compiled once and kept.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fmoe.agent.turn import PrefixCache, TurnSettings, run_turn
from fmoe.server.stream import TurnSplitter

log = logging.getLogger("fmoe.server")


class RequestError(Exception):
    """A request the engine cannot run: answered 400 naming ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy: {retry_after} s")
        self.retry_after = retry_after


@dataclass
class TurnRequest:
    """What both APIs translate to: chat-template messages, OpenAI tool schemas and the generation settings."""
    messages: list[dict]
    tools: list[dict] = field(default_factory=list)
    tool_choice: Any = "auto"                 # auto | required | none | {"name": NAME}
    parallel_tool_calls: bool = True
    response_schema: Any = None               # a JSON Schema the whole response must match (None: text / calls)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class PreparedTurn:
    request: TurnRequest
    grammar: Any
    settings: TurnSettings
    prompt_tokens: int


@dataclass
class TurnResult:
    content: str
    calls: list                               # [ToolCall(name, arguments)]
    finish: str                               # stop | length | tool_calls | stop_sequence | cancelled
    stop_sequence: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    step: Any = None                          # the ModelStep
    queued_s: float = 0.0


class Job:
    def __init__(self, turn: PreparedTurn, loop: asyncio.AbstractEventLoop):
        self.turn, self.loop = turn, loop
        self._events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.created = time.perf_counter()

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:   # the event loop is gone (server shutting down)
            self.cancel()

    async def events(self):
        while True:
            kind, value = await self._events.get()
            yield kind, value
            if kind in ("done", "error"):
                return

    async def result(self) -> TurnResult:
        async for kind, value in self.events():
            if kind == "done":
                return value
            if kind == "error":
                raise value
        raise RuntimeError("the job ended without a result")


class ServerEngine:
    def __init__(self, model, tok, *, name: str = "fmoe", max_queue: int = 8, max_tokens: int = 4096,
                 temperature: float = 0.0, prefix_snapshots: int = 8, context: int | None = None,
                 max_calls: int = 4, max_call_tokens: int | None = None):
        from fmoe.structured.formats import detect_call_format

        self.model, self.tok, self.name = model, tok, name
        self.max_queue, self.default_max_tokens, self.default_temperature = max_queue, max_tokens, temperature
        self.max_calls = max_calls
        self.max_call_tokens = max_call_tokens or TurnSettings().max_call_tokens
        self.context = context or getattr(model.cfg, "max_position_embeddings", None) or 32768
        self.call_format = detect_call_format(tok.chat_template or "")
        self.prefix = PrefixCache(model, max_snapshots=prefix_snapshots)
        self._queue: queue.Queue = queue.Queue()
        self._grammars: OrderedDict = OrderedDict()
        self._glock = threading.Lock()
        self._slock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.running: Job | None = None
        self.turn_s = 1.0                     # moving average of a turn's duration (Retry-After estimate)
        self.served = 0
        self.last: dict = {}                  # the last turn: finish, tokens, seconds
        self.created = int(time.time())

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> "ServerEngine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="fmoe-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def waiting(self) -> int:
        """Jobs waiting in the queue, not counting those whose client went away (the worker skips them)."""
        with self._queue.mutex:
            jobs = list(self._queue.queue)
        return sum(1 for j in jobs if j is not None and not j.cancelled.is_set())

    def status(self) -> dict:
        return {"model": self.name, "running": self.running is not None, "waiting": self.waiting,
                "max_queue": self.max_queue, "served": self.served, "context": self.context, "last": self.last}

    # -- admission ----------------------------------------------------------------------------------------
    def grammar(self, r: TurnRequest):
        """The compiled grammar of a request (cached). Raises UnsupportedSchemaError / GrammarError."""
        from fmoe.structured.grammar import compile_tool_grammar
        from fmoe.structured.response_format import compile_response_grammar

        key = json.dumps([r.tools, r.tool_choice, r.parallel_tool_calls, r.response_schema], sort_keys=True)
        with self._glock:
            g = self._grammars.get(key)
            if g is not None:
                self._grammars.move_to_end(key)
                return g
        vocab = self.model.cfg.vocab_size
        if r.response_schema is not None:
            g = compile_response_grammar(r.response_schema, tokenizer=self.tok, vocab_size=vocab)
        else:
            g = compile_tool_grammar(r.tools, call_format=self.call_format,
                                     tool_choice=r.tool_choice if r.tools else "none",
                                     parallel_calls=r.parallel_tool_calls,
                                     max_calls=self.max_calls if r.parallel_tool_calls else 1,
                                     tokenizer=self.tok, vocab_size=vocab)
        with self._glock:
            self._grammars[key] = g
            while len(self._grammars) > 32:
                self._grammars.popitem(last=False)
        return g

    def _prompt_ids(self, r: TurnRequest) -> list[int]:
        from fmoe.errors import FmoeError

        try:
            prompt = self.tok.apply_chat_template(r.messages, tools=r.tools or None, add_generation_prompt=True,
                                                  enable_thinking=False)
        except FmoeError as e:
            raise RequestError(f"the messages cannot be rendered with the model's chat template: {e}",
                               "messages") from None
        return self.tok.encode(prompt)

    def count_tokens(self, r: TurnRequest) -> int:
        """The prompt's tokens as ``prepare`` counts them (rendered and encoded only: no context check, no grammar)."""
        return len(self._prompt_ids(r))

    def budget(self, r: TurnRequest, prompt_tokens: int) -> tuple[int, int | None]:
        """(max_tokens, max_call_tokens) of a turn: the request's max_tokens (or the server's default), clipped so
        that the prompt plus all the turn may generate fits in the context. When a call can start, a call started at
        the last token of max_tokens may run max_call_tokens more (ToolCallProcessor.token_limit), so
        max_tokens - 1 + max_call_tokens must fit; when both do not, the call keeps at least half of the room left
        (or max_call_tokens, when that is less) and max_tokens the rest. max_call_tokens is None when no call can
        start (no tools, tool_choice none, response_format)."""
        left = self.context - prompt_tokens
        max_tokens = min(r.max_tokens or self.default_max_tokens, left)
        if r.response_schema is not None or not r.tools or r.tool_choice == "none":
            return max_tokens, None
        call = min(self.max_call_tokens, left)
        if max_tokens - 1 + call > left:
            call = max(left - max_tokens + 1, min(call, (left + 1) // 2))
            max_tokens = left - call + 1
        return max_tokens, call

    def prepare(self, r: TurnRequest) -> PreparedTurn:
        """Check a request against the model (template, context length, schemas, the call budget, sampling) before
        it waits in the queue: what the worker would fail on is a RequestError (400) here."""
        from fmoe.engine.generate import Sampling
        from fmoe.errors import FmoeError
        from fmoe.structured.grammar import GrammarError
        from fmoe.structured.schema import UnsupportedSchemaError

        n = len(self._prompt_ids(r))
        if n >= self.context:
            raise RequestError(f"the prompt has {n} tokens; this model's context is {self.context} tokens",
                               "messages", "context_length_exceeded")
        names = [(t.get("function") or {}).get("name") for t in r.tools]
        try:
            grammar = self.grammar(r)
        except UnsupportedSchemaError as e:
            param = ("response_format" if r.response_schema is not None else
                     f"tools.[{names.index(e.tool)}].function.parameters" if e.tool in names else "tools")
            raise RequestError(str(e), param, "unsupported_schema") from None
        except GrammarError as e:
            raise RequestError(str(e), "tool_choice" if "tool_choice" in str(e) else "tools") from None
        max_tokens, max_call_tokens = self.budget(r, n)
        if max_call_tokens is not None:
            try:   # what ToolCallProcessor checks when the turn starts (a GrammarError there would be a 500)
                grammar.check_call_budget(max_call_tokens)
            except GrammarError as e:
                name = next((x for x in names if f"tool {x!r}:" in str(e)), None)
                param = f"tools.[{names.index(name)}].function.parameters" if name is not None else "tools"
                raise RequestError(f"{e} (the call budget is what the {self.context}-token context leaves after "
                                   f"the {n}-token prompt, at most {self.max_call_tokens})", param,
                                   "context_length_exceeded" if max_call_tokens < self.max_call_tokens
                                   else "unsupported_schema") from None
        temperature = self.default_temperature if r.temperature is None else r.temperature
        seed = r.seed if r.seed is not None else (secrets.randbits(32) if temperature > 0 else 0)
        try:
            sampling = Sampling(temperature=temperature, top_p=r.top_p, top_k=r.top_k, seed=seed)
        except FmoeError as e:
            raise RequestError(str(e), "seed" if "seed" in str(e) and r.seed is not None else "temperature") \
                from None
        settings = TurnSettings(max_tokens=max_tokens, max_call_tokens=max_call_tokens, sampling=sampling,
                                thinking=False, call_format=self.call_format)
        return PreparedTurn(r, grammar, settings, n)

    def submit(self, turn: PreparedTurn, loop: asyncio.AbstractEventLoop) -> Job:
        with self._slock:
            waiting = self.waiting            # live jobs only: a cancelled one is skipped by the worker
            if waiting >= self.max_queue:
                raise QueueFull(max(1, round(self.turn_s * (waiting + 1))))
            job = Job(turn, loop)
            self._queue.put(job)
        return job

    # -- the worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            self.running = job
            t0 = time.perf_counter()
            try:
                res = self._run(job)
                self.last = {"finish": res.finish, "prompt_tokens": res.prompt_tokens,
                             "cached_tokens": res.cached_tokens, "completion_tokens": res.completion_tokens,
                             "queued_s": round(res.queued_s, 3), "turn_s": round(time.perf_counter() - t0, 3)}
                job.put("done", res)
            except Exception as e:  # noqa: BLE001 - reported to the client as a JSON error
                log.exception("turn failed")
                job.put("error", e)
            finally:
                self.running = None
                self.served += 1
                self.turn_s = 0.8 * self.turn_s + 0.2 * (time.perf_counter() - t0)

    def _run(self, job: Job) -> TurnResult:
        t = job.turn
        r = t.request
        queued_s = time.perf_counter() - job.created
        split = TurnSplitter(self.call_format, r.tools, r.stop,
                             calls=r.response_schema is None and bool(r.tools) and r.tool_choice != "none")

        def on_text(delta: str) -> None:
            for kind, value in split.feed(delta):
                job.put(kind, value)

        def on_token(_token_id: int) -> bool:
            return split.stopped or job.cancelled.is_set()

        step = run_turn(self.model, self.tok, r.messages, r.tools, t.settings, self.prefix, grammar=t.grammar,
                        on_text=on_text, on_token=on_token, on_prefix=lambda reused: job.put("start", reused))
        for kind, value in split.finish():
            job.put(kind, value)
        calls = list(step.calls)
        for c in calls[split.n_calls:]:          # (a call the splitter did not see close: never under a grammar)
            job.put("call", c)
        if job.cancelled.is_set():
            finish = "cancelled"
        elif split.stopped:
            finish = "stop_sequence"
        elif calls:
            finish = "tool_calls"
        elif step.finish_reason == "length":
            finish = "length"
        else:
            finish = "stop"
        content = split.content if split.stopped else step.content
        return TurnResult(content=content, calls=calls, finish=finish, stop_sequence=split.stop_sequence,
                          prompt_tokens=step.prompt_tokens, completion_tokens=step.tokens,
                          cached_tokens=step.reused_tokens, step=step, queued_s=queued_s)
