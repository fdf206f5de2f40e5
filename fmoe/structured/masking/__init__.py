"""Applying a grammar's token bitmask to logits, one module per array library, with the same names in each:

    from fmoe.structured.masking import torch as masking      # or numpy, mlx
    masker = masking.Masker()                                 # per-generation state: caches, buffers
    logits = masker.apply(logits, words)

`words` is the matcher's bitmask (int32, bit i of word i//32 set = token i allowed). apply() returns logits with
-inf at every id the mask disallows, including ids past the mask (a padded vocabulary tail): the logits themselves
(masked in place; a new array for mlx) or a buffer of the masker's, valid until its next apply().
ToolCallProcessor (processor.py) picks the module by the logits' type.

  * torch.py: CPU float32 logits go through the native kernel (fmoe/kernels/logits_mask.cpp); elsewhere the mask
    becomes cached index tensors and one index_fill_ or index_copy_ of the smaller side.
  * numpy.py: the bitmask decoding the others use (mask_to_ids, mask_to_bool); float32 logits masked in place by
    the native kernel, others by a cached bool mask.
  * mlx.py: mx.where against a cached bool mask (one fused pass on the GPU).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

CACHE_SIZE = 64


class MaskCache:
    """A small LRU of prepared masks (index tensors, bool arrays), keyed by the mask's bytes: the free-text phases
    have constant masks, and in the call region the same mask recurs (every step inside a string of a given kind).

        ids = cache.get((words.tobytes(), n), lambda: mask_to_ids(words, n))
    """

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, prepare: Callable[[], Any]) -> Any:
        hit = self._entries.get(key)
        if hit is None:
            hit = self._entries[key] = prepare()
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return hit
