"""ToolCallProcessor: DESIGN.md's LogitsProcessor over a compiled tool Grammar, for torch tensors and mlx arrays.

Mask application, CPU float32 logits (the engine's default): the native kernel `fmoe/kernels/logits_mask.cpp`
reads the 7,760 mask words once; when few tokens are allowed (<= 1/8: keys, numbers, names) it copies their logits
into the processor's preallocated -inf buffer (resetting the previous step's ids) and returns that buffer, else it
masks the logits in place, 8 at a time with AVX2, skipping words whose tokens are all allowed (0.01-0.05 ms; no
hashing, no index tensors). Elsewhere (CUDA or bf16 logits, no C++ compiler, FMOE_NATIVE=0) it never
makes a full-vocabulary pass on the host per step (a 248k-float fill or masked_fill costs 0.1-4 ms on a busy CPU):
  * the grammar's bitmask (int32 words, bit i of word i//32 = token i allowed) is turned into token ids by
    `mask_to_ids`: vectorized numpy over the 7,760 words, unpacking (np.unpackbits, little bit order) only the
    words that hold a set bit of the smaller side, so it returns the allowed ids when few are allowed (keys,
    numbers, enums) and the disallowed ids when most are (inside strings);
  * the ids (as an index tensor/array) are cached per distinct mask (keyed by the mask's bytes, small LRU): the
    free-text phases have constant masks (computed once per grammar: only the special/padding tokens are
    disallowed), and in the call region the same mask recurs (every step inside a string of a given kind);
  * torch: disallowed side -> one in-place `index_fill_` (-inf) of those ids; allowed side -> the allowed logits
    are copied (index_select / index_copy_) into a preallocated all -inf buffer, which is returned (the previous
    step's ids are reset to -inf first). Both are O(min(allowed, disallowed)).
  * mlx: `mx.where(mask, logits, -inf)` against a bool mask array built once per distinct mask (np.unpackbits of
    the bitmask), cached like the torch index (lazy, one fused pass on the GPU).

Contract of process(): the returned buffer (the logits themselves, or the processor's preallocated buffer, valid
until the next process() call) holds -inf at every id the grammar disallows, including the vocabulary padding tail
(ids >= the tokenizer's size, and ids >= 32 * number of mask words when the logits are longer than the mask); so a
caller's own -inf write into that tail (the generator's vocab_limit) is harmless.
forced() exposes the grammar's fast-forward run (llguidance compute_ff_tokens) for the generator's batched pass.

Overlap: the generator calls begin() right before each forward pass; inside the call region the next mask is then
computed on a worker thread (llguidance's mask computation runs in Rust without the GIL) while the engine computes
the logits, so process() only waits for a finished mask and applies it. No matcher method runs while a mask is
pending: accept()/forced()/done() first wait for it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from fmoe.structured.grammar import Grammar, GrammarError
from fmoe.kernels import native

_SHIFTS = np.arange(32, dtype=np.int64)
_CACHE_SIZE = 64
_MASK_POOL = ThreadPoolExecutor(1, thread_name_prefix="fmoe-mask")


def _torch_f32():
    import torch

    return torch.float32


# Few-allowed buffers of the native path (a 248k-float -inf row plus its dirty-id list), reused across processors:
# a processor takes one on its first step and gives it back (clean) when it is garbage collected, so a new turn's
# first step does not pay ~0.1-0.3 ms of allocation.
class _SelBuf(NamedTuple):
    out: Any          # torch float32 (n,), -inf except at the ids of the last few-allowed step
    dirty: np.ndarray  # those ids (int32), ndirty[0] of them
    ndirty: np.ndarray
    out_p: int        # the three addresses, taken once (the kernel is called every step)
    dirty_p: int
    ndirty_p: int


_SEL_POOL: dict[int, list[_SelBuf]] = {}
_SEL_LOCK = threading.Lock()


def _take_sel(n: int) -> _SelBuf:
    import torch

    with _SEL_LOCK:
        free = _SEL_POOL.get(n)
        if free:
            return free.pop()
    out = torch.full((n,), float("-inf"), dtype=torch.float32)
    dirty, ndirty = np.empty(n, dtype=np.int32), np.zeros(1, dtype=np.int64)
    return _SelBuf(out, dirty, ndirty, out.data_ptr(), dirty.ctypes.data, ndirty.ctypes.data)


def _give_back_sel(sel: _SelBuf) -> None:
    import torch

    k = int(sel.ndirty[0])
    if k:
        sel.out[torch.from_numpy(sel.dirty[:k].astype(np.int64))] = float("-inf")
        sel.ndirty[0] = 0
    with _SEL_LOCK:
        _SEL_POOL.setdefault(sel.out.numel(), []).append(sel)


def mask_to_ids(words: np.ndarray, n: int) -> tuple[bool, np.ndarray]:
    """(allowed_side, ids): ids (int64, ascending, < n) of the allowed tokens if allowed_side else of the
    disallowed ones, whichever side has fewer non-empty words. Ids >= 32*len(words) (logits longer than the mask)
    count as disallowed and are appended on the disallowed side."""
    nw = len(words)
    allowed_side = np.count_nonzero(words) <= nw - np.count_nonzero(words == -1)
    w = words if allowed_side else ~words
    nz = np.flatnonzero(w)
    bits = np.unpackbits(w[nz].view(np.uint8), bitorder="little").reshape(-1, 32).view(bool)
    ids = (nz[:, None] * 32 + _SHIFTS)[bits]
    if ids.size and ids[-1] >= n:
        ids = ids[ids < n]
    if not allowed_side and n > 32 * nw:
        ids = np.concatenate([ids, np.arange(32 * nw, n, dtype=np.int64)])
    return bool(allowed_side), ids


def mask_to_bool(words: np.ndarray, n: int) -> np.ndarray:
    """Bool array of length n: token allowed (False past the mask)."""
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").view(bool)
    if bits.size >= n:
        return bits[:n]
    return np.concatenate([bits, np.zeros(n - bits.size, dtype=bool)])


class ToolCallProcessor:
    """LogitsProcessor: process(logits) masks in place (torch) or returns a masked array (mlx)."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self.matcher = grammar.matcher()
        self._cache: OrderedDict = OrderedDict()
        self._neg = None
        self._neg_key = None
        self._neg_dirty = None
        self._pending = None
        self._native = native.load_mask()
        self._sel = None
        self._sel_fin = None
        self._wp = (None, 0)
        self.stats = {"steps": 0, "forced": 0, "accepted": 0, "overlapped": 0}

    def reset(self) -> None:
        self._settle()
        self.matcher.reset()
        self.stats = {"steps": 0, "forced": 0, "accepted": 0, "overlapped": 0}

    # ------------------------------------------------------------------------------------------ protocol
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
        n = int(logits.shape[-1])
        torch_side = type(logits).__module__.startswith("torch")
        if torch_side and self._native is not None and logits.device.type == "cpu" \
                and logits.dtype == _torch_f32() and logits.numel() == n and logits.is_contiguous():
            return self._native_apply(logits, words, n)
        key = (words.tobytes(), n, torch_side, str(getattr(logits, "device", "")))
        hit = self._cache.get(key)
        if hit is None:
            hit = self._prepare(words, n, logits, torch_side)
            self._cache[key] = hit
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if not torch_side:
            import mlx.core as mx

            return mx.where(hit, logits, mx.array(float("-inf"), dtype=logits.dtype))
        allowed_side, idx = hit
        if allowed_side:
            return self._keep_only(logits, idx)
        if idx.numel():
            logits.index_fill_(-1, idx, float("-inf"))
        return logits

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

    # ------------------------------------------------------------------------------------------ backends
    @staticmethod
    def _prepare(words: np.ndarray, n: int, logits, torch_side: bool):
        if torch_side:
            import torch

            allowed_side, ids = mask_to_ids(words, n)
            return allowed_side, torch.from_numpy(ids).to(logits.device)
        import mlx.core as mx

        return mx.array(mask_to_bool(words, n))

    def _native_apply(self, logits, words: np.ndarray, n: int):
        """Few allowed (<= n/8): their logits copied into the preallocated -inf buffer, which is returned; else the
        logits masked in place. Either way O(mask words) plus the writes of one side."""
        if self._sel is None or self._sel.out.numel() != n:
            if self._sel_fin is not None:
                self._sel_fin()                  # give the previous size's buffer back now
            self._sel = _take_sel(n)
            self._sel_fin = weakref.finalize(self, _give_back_sel, self._sel)
        sel = self._sel
        if words is not self._wp[0]:   # the matcher's buffer and the constant masks recur: keep their address
            self._wp = (words, words.ctypes.data)
        if self._native.fmoe_mask_apply_f32(logits.data_ptr(), sel.out_p, n, self._wp[1], len(words), sel.dirty_p,
                                            sel.ndirty_p, n // 8) < 0:
            return sel.out if logits.dim() == 1 else sel.out.view(logits.shape)
        return logits

    def _keep_only(self, logits, idx):
        import torch

        key = (logits.shape, logits.dtype, logits.device)
        if self._neg_key != key:  # preallocated all -inf buffer, reused every step
            self._neg = torch.full(logits.shape, float("-inf"), dtype=logits.dtype, device=logits.device)
            self._neg_key, self._neg_dirty = key, None
        if self._neg_dirty is not None:
            self._neg.index_fill_(-1, self._neg_dirty, float("-inf"))
        self._neg.index_copy_(-1, idx, logits.index_select(-1, idx))
        self._neg_dirty = idx
        return self._neg  # O(allowed) work; valid until the next process() call
