"""Token bitmasks for mlx logits (the MLX backend's forward returns mx.array).

    masker = Masker()
    logits = masker.apply(logits, words)   # a new array: mx.where(allowed, logits, -inf)

The bool mask array is built once per distinct mask (numpy.mask_to_bool) and cached; the where is lazy, one fused
pass on the GPU.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from fmoe.structured.masking import MaskCache
from fmoe.structured.masking.numpy import mask_to_bool


class Masker:
    """Mask application for mlx logits (one row, or rows that share the mask)."""

    def __init__(self):
        self.cache = MaskCache()

    def apply(self, logits: mx.array, words: np.ndarray) -> mx.array:
        n = int(logits.shape[-1])
        allowed = self.cache.get((words.tobytes(), n), lambda: mx.array(mask_to_bool(words, n)))
        return mx.where(allowed, logits, mx.array(float("-inf"), dtype=logits.dtype))
