"""Token bitmasks for numpy logits, and the bitmask decoding torch.py and mlx.py share.

    masker = Masker()
    logits = masker.apply(logits, words)       # in place: -inf where the mask disallows
    allowed_side, ids = mask_to_ids(words, n)  # the smaller side's token ids
    allowed = mask_to_bool(words, n)           # bool per token

Float32 C-contiguous writeable rows are masked by the native kernel (`fmoe_mask_logits_f32`, one pass over the
mask words); other logits through a cached bool mask of the disallowed tokens.
"""

from __future__ import annotations

import numpy as np

from fmoe.kernels import native
from fmoe.structured.masking import MaskCache

_SHIFTS = np.arange(32, dtype=np.int64)


def mask_to_ids(words: np.ndarray, n: int) -> tuple[bool, np.ndarray]:
    """(allowed_side, ids): ids (int64, ascending, < n) of the allowed tokens if allowed_side else of the
    disallowed ones, whichever side has fewer non-empty words. Ids >= 32*len(words) (logits longer than the mask)
    count as disallowed and are appended on the disallowed side.

    Vectorized over the words: only the words that hold a set bit of the smaller side are unpacked
    (np.unpackbits, little bit order)."""
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


class Masker:
    """Mask application for numpy logits (one row, or rows that share the mask)."""

    def __init__(self):
        self.native = native.load_mask()
        self.cache = MaskCache()

    def apply(self, logits: np.ndarray, words: np.ndarray) -> np.ndarray:
        n = int(logits.shape[-1])
        if (self.native is not None and logits.dtype == np.float32 and logits.ndim == 1
                and logits.flags.c_contiguous and logits.flags.writeable):
            self.native.fmoe_mask_logits_f32(logits.ctypes.data, n, words.ctypes.data, len(words))
            return logits
        disallowed = self.cache.get((words.tobytes(), n), lambda: ~mask_to_bool(words, n))
        if not logits.flags.writeable:
            return np.where(disallowed, np.asarray(-np.inf, dtype=logits.dtype), logits)
        logits[..., disallowed] = -np.inf
        return logits
