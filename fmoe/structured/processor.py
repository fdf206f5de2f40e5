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
    """LogitsProcessor: process(logits) masks in place (torch, numpy) or returns a masked array (mlx)."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self.matcher = grammar.matcher()
        self._pending = None
        self._masker = None
        self._logits_type = None
        self.stats = {"steps": 0, "forced": 0, "accepted": 0, "overlapped": 0}

    def reset(self) -> None:
        self._settle()
        self.matcher.reset()
        self.stats = {"steps": 0, "forced": 0, "accepted": 0, "overlapped": 0}

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
        if type(logits) is not self._logits_type:
            self._masker, self._logits_type = masker_for(logits), type(logits)
        return self._masker.apply(logits, words)

    def accept(self, token_id: int) -> None:
        self._settle()
        self.stats["accepted"] += 1
        if not self.matcher.consume(int(token_id)):
            raise GrammarError(f"token {token_id} is not allowed by the tool grammar: {self.matcher.error}")

    def forced(self) -> list[int]:
        self._settle()
        ff = self.matcher.forced_tokens()
        self.stats["forced"] += len(ff)
        return ff

    def done(self) -> bool:
        self._settle()
        return self.matcher.is_done()
