"""One assistant turn: messages + tools -> one constrained generation -> a ModelStep with the parsed calls.

This is the one turn every front end runs (``fmoe run``, ``fmoe chat``, ``fmoe eval``, the Python API):

    prefix = PrefixCache(model)                          # engine-state snapshots, reused across turns
    settings = TurnSettings(max_tokens=256, call_format="xml")
    step = run_turn(model, tok, messages, schemas, settings, prefix, grammar=grammar)   # -> ModelStep
    step.calls                                           # [ToolCall(name, arguments)], parsed and schema-checked

Prefix reuse: the engine's state (KV + recurrent) cannot be rolled back, so :class:`PrefixCache` keeps a snapshot of
the cache at the end of each prompt's prefill, and one of the system + tools block (shared by every conversation of
the model). The next prompt is rendered again from the messages and re-encoded; the longest snapshot whose tokens are
a prefix of it is resumed and only the rest is prefilled. When the previous prompt is not a prefix (the template
re-rendered earlier turns differently) the step records ``prefix_fallback``.
"""
from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from fmoe.agent.steps import ModelStep

_PINNED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> system-prefix snapshots (shared)


@dataclass
class TurnSettings:
    """What one turn generates under: token budget, sampling, thinking, the call format and (with a grammar) the
    tool choice the grammar was compiled for."""
    max_tokens: int = 512
    max_call_tokens: int | None = 1024    # a started tool call may run past max_tokens up to this many tokens
                                          # (the grammar then closes it in time: ToolCallProcessor); None = no
    sampling: Any = None                  # fmoe.engine.generate.Sampling; None = greedy
    thinking: bool = False
    call_format: str = "xml"
    fast_forward: bool = True             # append grammar-forced tokens without a sampling step
    processors: Sequence = field(default_factory=tuple)   # extra logits processors after the grammar's


class PrefixCache:
    """Snapshots of the engine state at the end of recent prompts (one conversation) plus the pinned system + tools
    blocks (every conversation of the same model)."""

    def __init__(self, model, max_snapshots: int = 4):
        self.model = model
        self.max_snapshots = max_snapshots
        self.snapshots: list = []
        try:
            self.pinned: list = _PINNED.setdefault(model, [])
        except TypeError:
            self.pinned = []
        self.last_prompt: list[int] | None = None
        self._blocks: dict[str, list[int]] = {}    # (system, tools, thinking) -> the block's token ids

    def reset(self) -> None:
        """A new conversation: the pinned system snapshots stay, the prompt snapshots go."""
        self.snapshots = []
        self.last_prompt = None

    def pin_system_prefix(self, tok, messages: list[dict], tools: list[dict], thinking: bool, ids: list[int]) -> int:
        """Snapshot the system + tools block of ``ids`` once; returns how many tokens it computed now (0 when a
        snapshot of it existed or the prompt has no such block)."""
        pre = self._system_block(tok, messages, tools, thinking)
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

    def _system_block(self, tok, messages: list[dict], tools: list[dict], thinking: bool) -> list[int]:
        """The token ids of the system + tools block the chat template renders before the first user turn (empty
        when there is none), rendered and encoded once per distinct system message, tool list and thinking mode."""
        system = [m for m in messages[:1] if m.get("role") == "system"]
        key = json.dumps([system, tools, thinking], sort_keys=True, default=str)
        pre = self._blocks.get(key)
        if pre is None:
            text = tok.apply_chat_template([*system, {"role": "user", "content": "x"}], tools=tools or None,
                                           add_generation_prompt=False, enable_thinking=thinking)
            cut = text.find("<|im_start|>user")
            pre = tok.encode(text[:cut]) if cut > 0 else []
            if len(self._blocks) >= 32:
                self._blocks.clear()
            self._blocks[key] = pre
        return pre

    def lookup(self, ids: list[int]):
        """(cache or None, reused tokens, fallback): the longest snapshot that is a prefix of ``ids``, copied."""
        fallback = False
        if self.last_prompt is not None:
            n = len(self.last_prompt)
            fallback = not (n < len(ids) and ids[:n] == self.last_prompt)
        best = None
        for s in [*self.pinned, *self.snapshots]:
            n = len(s.tokens)
            if n < len(ids) and (best is None or n > len(best.tokens)) and ids[:n] == s.tokens:
                best = s
        if best is None:
            return None, 0, fallback
        return best.snapshot(), len(best.tokens), fallback

    def keep(self, cache) -> None:
        self.snapshots.append(cache)
        del self.snapshots[:-self.max_snapshots]


def _expert_bytes(model) -> int:
    return model.stats().bytes_read


def run_turn(model, tok, messages: list[dict], tools: list[dict], settings: TurnSettings, prefix: PrefixCache,
             *, grammar=None, step: int = 1, on_text: Callable[[str], None] | None = None,
             on_token: Callable[[int], bool | None] | None = None,
             on_prefix: Callable[[int], None] | None = None) -> ModelStep:
    """Render ``messages`` with ``tools``, generate one assistant turn (under ``grammar`` when given: a compiled
    fmoe.structured grammar) and parse its calls. ``on_prefix(reused_tokens)`` is called once the reused prefix is
    known, before the prefill (a server reports its usage up front). ``on_token(token_id)`` is called after each
    generated token (after ``on_text``); returning True ends the turn there (finish_reason "stopped": a server's
    stop string or a client that went away)."""
    from fmoe.engine.generate import Generation, Sampling
    from fmoe.engine.tokenizer import StreamingDetokenizer
    from fmoe.structured.parser import parse_tool_calls
    from fmoe.structured.processor import ToolCallProcessor

    t0 = time.perf_counter()
    since = getattr(model, "stats_since", None)
    mark = model.stats() if since is not None else None   # this step's engine window (pinning included)
    prompt = tok.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                     enable_thinking=settings.thinking)
    ids = tok.encode(prompt)
    tp = time.perf_counter()
    pinned_now = prefix.pin_system_prefix(tok, messages, tools, settings.thinking, ids)
    pin_s = time.perf_counter() - tp
    cache, reused, fallback = prefix.lookup(ids)
    fresh = pinned_now if (pinned_now and reused == pinned_now) else 0
    reused -= fresh   # the system block computed at this step counts as prefilled, not reused
    if on_prefix is not None:
        on_prefix(reused)
    procs = [ToolCallProcessor(grammar, max_call_tokens=settings.max_call_tokens)] if grammar is not None else []
    gen = Generation(model, ids, max_tokens=settings.max_tokens, sampling=settings.sampling or Sampling(),
                     stop_ids=list(tok.eos_token_ids), processors=[*procs, *settings.processors], cache=cache,
                     vocab_limit=min(tok.vocab_size, model.cfg.vocab_size), fast_forward=settings.fast_forward)
    out: list[int] = []
    detok = StreamingDetokenizer(tok, skip_ids=gen.stop_ids) if on_text is not None else None
    bytes_after_prefill = None
    steps = iter(gen)
    for st in steps:
        if not out:  # the cache now holds exactly the prompt: keep it for the next turn
            bytes_after_prefill = _expert_bytes(model)
            if gen.cache.tokens == ids:
                prefix.keep(gen.cache.snapshot())
        out.append(st.token_id)
        if detok is not None:
            delta = detok.add(st.token_id)
            if delta:
                on_text(delta)
        if on_token is not None and on_token(st.token_id):
            steps.close()   # the generator's finally records its stats
            gen.stats.finish_reason = "stopped"
            break
    prefix.last_prompt = ids
    gs = gen.stats
    prefilled = gs.prefilled_tokens + fresh
    prefill_s = gs.prefill_s + pin_s
    finished = gs.finish_reason in ("stop", "grammar")
    text = tok.decode([t for t in out if t not in gen.stop_ids])
    res = parse_tool_calls(text, settings.call_format, tools, finished=finished)
    reasoning = ""
    if "</think>" in text:
        reasoning = text.split("</think>", 1)[0].replace("<think>", "").strip()
    elif settings.thinking and not finished and not res.calls:
        reasoning = text.replace("<think>", "").strip()
    failure = res.failure if res.failure is not None and res.failure.category != "no_call" else None
    prefill_passes = -(-gs.prefilled_tokens // gen.prefill_chunk)
    return ModelStep(
        step=step, text=text, content=res.content, reasoning=reasoning,
        calls=list(res.calls), parse_failure=failure,
        tokens=gs.generated_tokens, forced_tokens=gs.forced_tokens, prompt_tokens=len(ids),
        prefilled_tokens=prefilled, reused_tokens=reused, prefix_fallback=fallback,
        finish_reason=gs.finish_reason, closed_early=procs[0].closed_early if procs else 0,
        decode_passes=max(0, gs.forward_passes - prefill_passes),
        decode_bytes=(_expert_bytes(model) - bytes_after_prefill) if bytes_after_prefill is not None else 0,
        timings={"prefill_s": prefill_s, "decode_s": gs.decode_s,
                 "prefill_tok_s": prefilled / prefill_s if prefill_s else 0.0,
                 "decode_tok_s": gs.decode_tok_s, "step_s": time.perf_counter() - t0},
        engine=since(mark) if since is not None else gs.engine, prompt_ids=ids, token_ids=out)
