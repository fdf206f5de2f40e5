"""ToolCallProcessor: DESIGN.md's LogitsProcessor over a compiled tool Grammar, for torch tensors and mlx arrays.

Mask application never copies the vocabulary per step:
  * free-text phases: the mask is a constant of the grammar; its disallowed ids (the special/padding tokens) are
    cached as an index tensor and written with one in-place index_fill_ (torch) / scatter (mlx);
  * call region: from the bitmask words we pick the cheaper side: when few tokens are allowed, gather their logits,
    fill -inf, scatter them back; when most are allowed, fill only the disallowed ids. Both touch O(min(allowed,
    disallowed)) logits plus one pass over the 7,760 mask words, never a 248k temporary.
forced() exposes the grammar's fast-forward run (llguidance compute_ff_tokens) for the generator's batched pass.
"""

from __future__ import annotations

import numpy as np

from fmoe.agent.grammar import Grammar, GrammarError

_SHIFTS = np.arange(32, dtype=np.int32)


def mask_to_ids(words: np.ndarray, n: int) -> tuple[bool, np.ndarray]:
    """(allowed_side, ids): ids of allowed tokens if allowed_side else ids of disallowed tokens (< n)."""
    full = words == -1
    empty = words == 0
    n_full = int(np.count_nonzero(full))
    partial = np.flatnonzero(~(full | empty))
    pw = words[partial]
    bits = ((pw[:, None] >> _SHIFTS) & 1).astype(bool)  # small: partial words only
    if n_full * 32 * 2 < n:  # few allowed
        full_idx = np.flatnonzero(full)
        ids = np.concatenate([(full_idx[:, None] * 32 + _SHIFTS).ravel(), (partial[:, None] * 32 + _SHIFTS)[bits]])
        return True, ids[ids < n]
    empty_idx = np.flatnonzero(empty)
    ids = np.concatenate([(empty_idx[:, None] * 32 + _SHIFTS).ravel(), (partial[:, None] * 32 + _SHIFTS)[~bits]])
    return False, ids[ids < n]


class ToolCallProcessor:
    """LogitsProcessor: process(logits) masks in place (torch) or returns a masked array (mlx)."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self.matcher = grammar.matcher()
        self._const_cache: dict[tuple[int, str, int, str], object] = {}
        self.stats = {"steps": 0, "forced": 0, "accepted": 0}

    def reset(self) -> None:
        self._neg_dirty = getattr(self, "_neg_dirty", None)
        self.matcher.reset()
        self.stats = {"steps": 0, "forced": 0, "accepted": 0}

    # ------------------------------------------------------------------------------------------ protocol
    def process(self, logits):
        self.stats["steps"] += 1
        words = self.matcher.mask()
        n = int(logits.shape[-1])
        if self.matcher.mask_is_constant():
            key = (id(words), type(logits).__module__, n, str(getattr(logits, "device", "")))
            idx = self._const_cache.get(key)
            if idx is None:
                _, dis = mask_to_ids(words, n)
                dis = np.concatenate([dis, np.arange(min(n, 32 * len(words)), n)]).astype(np.int64)
                idx = self._to_index(dis, logits)
                self._const_cache[key] = idx
            return self._fill(logits, idx)
        allowed_side, ids = mask_to_ids(words, n)
        if allowed_side:
            return self._keep_only(logits, ids)
        if n > 32 * len(words):
            ids = np.concatenate([ids, np.arange(32 * len(words), n)])
        return self._fill(logits, self._to_index(ids.astype(np.int64), logits))

    def accept(self, token_id: int) -> None:
        self.stats["accepted"] += 1
        if not self.matcher.consume(int(token_id)):
            raise GrammarError(f"token {token_id} is not allowed by the tool grammar: {self.matcher.error}")

    def forced(self) -> list[int]:
        ff = self.matcher.forced_tokens()
        self.stats["forced"] += len(ff)
        return ff

    def done(self) -> bool:
        return self.matcher.is_done()

    # ------------------------------------------------------------------------------------------ backends
    @staticmethod
    def _is_torch(x) -> bool:
        return type(x).__module__.startswith("torch")

    def _to_index(self, ids: np.ndarray, logits):
        if self._is_torch(logits):
            import torch

            return torch.from_numpy(ids).to(logits.device)
        import mlx.core as mx

        return mx.array(ids.astype(np.int32))

    def _fill(self, logits, idx):
        if self._is_torch(logits):
            if idx.numel():
                logits.index_fill_(-1, idx, float("-inf"))
            return logits
        if idx.size == 0:
            return logits
        import mlx.core as mx

        logits[idx] = mx.array(float("-inf"), dtype=logits.dtype)
        return logits

    def _keep_only(self, logits, ids: np.ndarray):
        if self._is_torch(logits):
            import torch

            idx = torch.from_numpy(ids.astype(np.int64)).to(logits.device)
            key = (logits.shape, logits.dtype, logits.device)
            if getattr(self, "_neg_key", None) != key:  # preallocated all -inf buffer, reused every step
                self._neg = torch.full(logits.shape, float("-inf"), dtype=logits.dtype, device=logits.device)
                self._neg_key, self._neg_dirty = key, None
            if self._neg_dirty is not None:
                self._neg.index_fill_(-1, self._neg_dirty, float("-inf"))
            self._neg.index_copy_(-1, idx, logits.index_select(-1, idx))
            self._neg_dirty = idx
            return self._neg  # O(allowed) work; valid until the next process() call
        import mlx.core as mx

        idx = mx.array(ids.astype(np.int32))
        out = mx.full(logits.shape, float("-inf"), dtype=logits.dtype)
        out[idx] = logits[idx]
        return out
