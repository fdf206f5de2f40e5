"""Token bitmasks for torch logits.

    masker = Masker()
    logits = masker.apply(logits, words)   # the logits (masked in place) or the masker's few-allowed buffer

CPU float32 logits (the engine's default): the native kernel `fmoe/kernels/logits_mask.cpp` reads the mask words
once; when few tokens are allowed (<= 1/8: keys, numbers, names) it copies their logits into the masker's -inf
buffer (resetting the previous step's ids) and that buffer is returned, else it masks the logits in place, 8 at a
time with AVX2, skipping words whose tokens are all allowed (0.01-0.05 ms; no hashing, no index tensors). The
few-allowed buffers (a 248k-float -inf row plus its dirty-id list) are pooled: a masker takes one on its first step
and gives it back, clean, when it is garbage collected, so a new turn's first step does not pay ~0.1-0.3 ms of
allocation.

Elsewhere (CUDA or bf16 logits, no C++ compiler, FMOE_NATIVE=0) there is never a full-vocabulary pass on the host
per step (a 248k-float fill or masked_fill costs 0.1-4 ms on a busy CPU): the mask becomes token ids
(numpy.mask_to_ids, the smaller side), cached per distinct mask as an index tensor on the logits' device; the
disallowed side is one in-place `index_fill_` (-inf), the allowed side is copied (index_select / index_copy_) into
a preallocated all -inf buffer, which is returned (the previous step's ids reset first). Both are
O(min(allowed, disallowed)).
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import numpy as np
import torch

from fmoe.kernels import native
from fmoe.structured.masking import MaskCache
from fmoe.structured.masking.numpy import mask_to_ids


class FewAllowedBuffer(NamedTuple):
    """The native path's output when few tokens are allowed."""
    out: torch.Tensor  # float32 (n,), -inf except at the ids of the last few-allowed step
    dirty: np.ndarray  # those ids (int32), ndirty[0] of them
    ndirty: np.ndarray
    out_p: int         # the three addresses, taken once (the kernel is called every step)
    dirty_p: int
    ndirty_p: int


_POOL: dict[int, list[FewAllowedBuffer]] = {}
_POOL_LOCK = threading.Lock()


def take_few_allowed_buffer(n: int) -> FewAllowedBuffer:
    """A clean buffer for n logits: from the pool, else newly allocated."""
    with _POOL_LOCK:
        free = _POOL.get(n)
        if free:
            return free.pop()
    out = torch.full((n,), float("-inf"), dtype=torch.float32)
    dirty, ndirty = np.empty(n, dtype=np.int32), np.zeros(1, dtype=np.int64)
    return FewAllowedBuffer(out, dirty, ndirty, out.data_ptr(), dirty.ctypes.data, ndirty.ctypes.data)


def give_back_few_allowed_buffer(buf: FewAllowedBuffer) -> None:
    """Reset the ids the last step wrote to -inf and return the buffer to the pool."""
    k = int(buf.ndirty[0])
    if k:
        buf.out[torch.from_numpy(buf.dirty[:k].astype(np.int64))] = float("-inf")
        buf.ndirty[0] = 0
    with _POOL_LOCK:
        _POOL.setdefault(buf.out.numel(), []).append(buf)


class Masker:
    """Mask application for torch logits (one row, or rows that share the mask)."""

    def __init__(self):
        self.native = native.load_mask()
        self.cache = MaskCache()
        self.few_allowed: FewAllowedBuffer | None = None
        self._give_back = None
        self._words = (None, 0)   # the last mask array and its address
        self._keep = None         # the index path's all -inf buffer, its (shape, dtype, device), the ids it holds
        self._keep_key = None
        self._keep_dirty = None

    def apply(self, logits: torch.Tensor, words: np.ndarray) -> torch.Tensor:
        n = int(logits.shape[-1])
        if self.native is not None and logits.device.type == "cpu" and logits.dtype == torch.float32 \
                and logits.numel() == n and logits.is_contiguous():
            return self._apply_native(logits, words, n)
        allowed_side, idx = self.cache.get((words.tobytes(), n, str(logits.device)),
                                           lambda: self._index(words, n, logits.device))
        if allowed_side:
            return self._keep_only(logits, idx)
        if idx.numel():
            logits.index_fill_(-1, idx, float("-inf"))
        return logits

    @staticmethod
    def _index(words: np.ndarray, n: int, device) -> tuple[bool, torch.Tensor]:
        allowed_side, ids = mask_to_ids(words, n)
        return allowed_side, torch.from_numpy(ids).to(device)

    def _apply_native(self, logits: torch.Tensor, words: np.ndarray, n: int) -> torch.Tensor:
        """Few allowed (<= n/8): their logits copied into the few-allowed buffer, which is returned; else the
        logits masked in place. Either way O(mask words) plus the writes of one side."""
        if self.few_allowed is None or self.few_allowed.out.numel() != n:
            if self._give_back is not None:
                self._give_back()                # give the previous size's buffer back now
            self.few_allowed = take_few_allowed_buffer(n)
            self._give_back = weakref.finalize(self, give_back_few_allowed_buffer, self.few_allowed)
        buf = self.few_allowed
        if words is not self._words[0]:   # the matcher's buffer and the constant masks recur: keep their address
            self._words = (words, words.ctypes.data)
        if self.native.fmoe_mask_apply_f32(logits.data_ptr(), buf.out_p, n, self._words[1], len(words), buf.dirty_p,
                                           buf.ndirty_p, n // 8) < 0:
            return buf.out if logits.dim() == 1 else buf.out.view(logits.shape)
        return logits

    def _keep_only(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        key = (logits.shape, logits.dtype, logits.device)
        if self._keep_key != key:  # preallocated all -inf buffer, reused every step
            self._keep = torch.full(logits.shape, float("-inf"), dtype=logits.dtype, device=logits.device)
            self._keep_key, self._keep_dirty = key, None
        if self._keep_dirty is not None:
            self._keep.index_fill_(-1, self._keep_dirty, float("-inf"))
        self._keep.index_copy_(-1, idx, logits.index_select(-1, idx))
        self._keep_dirty = idx
        return self._keep  # O(allowed) work; valid until the next apply() call
