"""ToolCallProcessor: a LogitsProcessor (fmoe.engine.interfaces) over a compiled tool Grammar, for torch, mlx and
numpy logits.

    proc = ToolCallProcessor(compile_tool_grammar(tools, "xml", tokenizer=tok))
    proc.begin()                  # before the forward pass: the next mask starts on a worker thread
    logits = proc.process(logits) # -inf wherever the grammar disallows
    proc.accept(token_id)         # the sampled token
    proc.forced() -> [ids]        # the grammar's forced run (llguidance compute_ff_tokens), for a batched pass
    proc.done() -> bool           # the grammar is complete (end of turn accepted)

The processor drives the grammar's matcher; applying the mask is the job of fmoe/structured/masking/, one module
per array library (torch.py, mlx.py, numpy.py), picked by the logits' type: see masking/__init__.py.

Contract of process(): the returned buffer (the logits themselves, or a buffer of the processor's, valid until the
next process() call) holds -inf at every id the grammar disallows, including the vocabulary padding tail (ids >=
the tokenizer's size, and ids >= 32 * number of mask words when the logits are longer than the mask); so a caller's
own -inf write into that tail (the generator's vocab_limit) is harmless.

Overlap: the generator calls begin() right before each forward pass; inside the call region the next mask is then
computed on a worker thread (llguidance's mask computation runs in Rust without the GIL) while the engine computes
the logits, so process() only waits for a finished mask and applies it. No matcher method runs while a mask is
pending: accept()/forced()/done() first wait for it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fmoe.structured.grammar import Grammar, GrammarError

_MASK_POOL = ThreadPoolExecutor(1, thread_name_prefix="fmoe-mask")


def masker_for(logits):
    """A new Masker of the masking module for the logits' array library (torch, mlx or numpy)."""
    library = type(logits).__module__.split(".")[0]
    if library == "torch":
        from fmoe.structured.masking.torch import Masker
    elif library == "mlx":
        from fmoe.structured.masking.mlx import Masker
    elif library == "numpy":
        from fmoe.structured.masking.numpy import Masker
    else:
        raise TypeError(f"logits of type {type(logits).__qualname__} ({library}): expected torch, mlx or numpy")
    return Masker()


class ToolCallProcessor:
    """LogitsProcessor: process(logits) masks in place (torch, numpy) or returns a masked array (mlx).

    Budget (``max_call_tokens``, with the generator's ``max_tokens`` given to ``token_limit``): a call in progress
    may run past ``max_tokens`` up to ``max_call_tokens`` tokens from its ``<tool_call>``; when the tokens left come
    within ``close_slack`` of the length of the grammar's closing path (fmoe.structured.closing), the mask allows
    only tokens after which the call can still close in time (see _budget_ids), so that it ends valid
    (``closed_early`` counts the calls where this overruled the model's first choice). Past ``max_tokens`` no further
    call starts. A tool whose shortest call does not fit ``max_call_tokens`` is a GrammarError here, before anything
    is generated. Residual risk: outside that window, a single token that lengthens the closing path by more than
    ``close_slack`` tokens (a key that opens a large required object) can still leave too little budget."""

    def __init__(self, grammar: Grammar, *, max_call_tokens: int | None = None, close_slack: int = 48,
                 top_k: int = 4):
        self.grammar = grammar
        self.matcher = grammar.matcher()
        self._pending = None
        self._masker = None
        self._logits_type = None
        self.max_call_tokens = max_call_tokens
        self.close_slack, self.top_k = close_slack, top_k
        if max_call_tokens is not None:
            if max_call_tokens < 1:
                raise GrammarError(f"max_call_tokens must be positive, got {max_call_tokens}")
            grammar.check_call_budget(max_call_tokens)
        self._reset_budget()
        self.stats = {"steps": 0, "forced": 0, "accepted": 0, "overlapped": 0}

    def _reset_budget(self) -> None:
        self.max_tokens: int | None = None
        self.n = 0                       # tokens accepted
        self.call_start: int | None = None
        self.closed_early = 0            # calls whose end the budget steered (the model's choice was overruled)
        self._steered_call: int | None = None
        self._words = None
        self._next_paths: dict[int, list[int]] = {}   # token -> a closing path after it (from _budget_ids)
        self._known: list[int] | None = None           # a closing path from the current state, when known

    def reset(self) -> None:
        self._settle()
        self.matcher.reset()
        self._reset_budget()
        self.stats = {"steps": 0, "forced": 0, "accepted": 0, "overlapped": 0}

    # -- budget ------------------------------------------------------------------------------------------------
    def token_limit(self, max_tokens: int) -> int:
        """How many tokens the generation may have in all, given its ``max_tokens``: more while a call runs."""
        self.max_tokens = max_tokens
        if self.max_call_tokens is None or self.call_start is None or not self.matcher.in_call_region():
            return max_tokens
        return max(max_tokens, self.call_start + self.max_call_tokens)

    def _budget_ids(self, logits, words) -> list[int] | None:
        """The ids allowed under the budget, or None while it leaves room (call region, llguidance backend only).

        Invariant: the tokens left (``left``, this one included) are at least the closing path's length. Within
        ``close_slack`` tokens of it, the model keeps its choice among its ``top_k`` allowed tokens that keep the
        invariant (each checked on a copy of the matcher: its own closing path must fit in ``left - 1``), plus the
        path's next token, which always does."""
        m = self.matcher
        if (self.max_call_tokens is None or self.max_tokens is None or not m.in_call_region() or m.is_error()
                or getattr(m.region, "m", None) is None):
            return None
        info = self.grammar.info
        left = self.token_limit(self.max_tokens) - self.n
        if m.region.accepting():                        # between calls (or after the last): no call past max_tokens
            return [info.eos_id] if (self.n >= self.max_tokens or left <= 1) else None
        from fmoe.structured.closing import closer_for

        closer = closer_for(info)
        path = closer.path(m.region.m, limit=left + self.close_slack)
        if self._known and (path is None or len(self._known) < len(path)):
            path = self._known    # the rest of an earlier path: greedy paths are not always each other's tails
        self._next_paths = {}
        if not path:             # longer than the budget plus the slack (no pressure yet), or the region is done
            return None
        self._next_paths[path[0]] = path[1:]
        if left > len(path) + self.close_slack:
            return None
        ids = [path[0]]
        if left > len(path):
            for t in _top_allowed(logits, words, self.top_k, info.vocab_size):
                if t == path[0]:
                    continue
                c = m.region.m.deep_copy()
                if not c.consume_token(t) or c.is_error():
                    continue
                p = closer.path(c, limit=left)
                if p is not None and len(p) <= left - 1:
                    ids.append(t)
                    self._next_paths[t] = p
        top = _top_allowed(logits, words, 1, info.vocab_size)
        if top and top[0] not in ids and self._steered_call != self.call_start:
            self._steered_call = self.call_start
            self.closed_early += 1
        return ids

    def begin(self) -> None:
        """Start computing the next step's mask while the engine runs its forward pass (call region only: the
        free-text masks are constants)."""
        if self._pending is None and not self.matcher.mask_is_constant():
            self._pending = _MASK_POOL.submit(lambda: self.matcher.mask().copy())

    def _settle(self):
        words, self._pending = (self._pending.result() if self._pending is not None else None), None
        return words

    def process(self, logits):
        self.stats["steps"] += 1
        words = self._settle()
        if words is None:
            words = self.matcher.mask()
        else:
            self.stats["overlapped"] += 1
        ids = self._budget_ids(logits, words)
        if ids is not None:
            self._words = words = self.grammar.info.bitmask(ids, normal=False)
        if type(logits) is not self._logits_type:
            self._masker, self._logits_type = masker_for(logits), type(logits)
        return self._masker.apply(logits, words)

    def accept(self, token_id: int) -> None:
        self._settle()
        self.stats["accepted"] += 1
        token_id = int(token_id)
        if token_id == self.grammar.info.tool_call_id:
            self.call_start = self.n
        self.n += 1
        if token_id in self._next_paths:
            self._known = self._next_paths[token_id]
        elif self._known and self._known[0] == token_id:      # forced tokens after a sampled one
            self._known = self._known[1:]
        else:
            self._known = None
        self._next_paths = {}
        if not self.matcher.consume(token_id):
            raise GrammarError(f"token {token_id} is not allowed by the tool grammar: {self.matcher.error}")

    def forced(self) -> list[int]:
        self._settle()
        ff = self.matcher.forced_tokens()
        self.stats["forced"] += len(ff)
        return ff

    def done(self) -> bool:
        self._settle()
        return self.matcher.is_done()


def _top_allowed(logits, words, k: int, vocab: int) -> list[int]:
    """The ``k`` allowed ids (bitmask ``words``) with the highest logits, best first."""
    lib = type(logits).__module__.split(".")[0]
    if lib == "torch":
        x = logits.detach().reshape(-1).float().cpu().numpy()
    else:
        x = np.asarray(logits, dtype=np.float32).reshape(-1)
    n = min(x.size, vocab, words.size * 32)
    allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[:n].astype(bool)
    ids = np.flatnonzero(allowed)
    if ids.size == 0:
        return []
    vals = x[ids]
    k = min(k, ids.size)
    top = ids[np.argpartition(-vals, k - 1)[:k]]
    return [int(t) for t in top[np.argsort(-x[top], kind="stable")]]
