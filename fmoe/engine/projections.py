"""Projections of one input fused into one matrix, so that a decode step makes one kernel call instead of several.

    qkv = Projections(ops, [q_weight, k_weight, v_weight])    # checkpoint weights (QuantizedWeight or float arrays)
    q, k, v = qkv(x)                                           # [T, out_i] each

The weights are stacked along their output rows when they can be (all quantized with the same bits and group size,
or all dense, and one input size): each output row is computed on its own by every kernel (the native CPU mat-vec,
the GPU grouped mat-vec, mlx's quantized matmul), so the results are those of separate calls; otherwise they stay
separate. Used for Gated DeltaNet's four input projections, attention's q/k/v, the router with the shared-expert
gate, and the shared expert's gate and up.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fmoe.kernels.quant import QuantizedWeight


def stack_rows(weights: Sequence) -> object | None:
    """One weight with the rows of ``weights`` in order, or None when they cannot share a matrix."""
    if all(isinstance(w, QuantizedWeight) for w in weights):
        first = weights[0]
        same = all((w.bits, w.group_size, w.in_features, np.asarray(w.scales).dtype, np.asarray(w.weight).ndim)
                   == (first.bits, first.group_size, first.in_features, np.asarray(first.scales).dtype, 2)
                   for w in weights)
        if not same or not all(isinstance(a, np.ndarray) for w in weights for a in (w.weight, w.scales, w.biases)):
            return None
        return QuantizedWeight(*(np.concatenate([getattr(w, part) for w in weights]) for part in
                                 ("weight", "scales", "biases")), first.bits, first.group_size)
    if any(isinstance(w, QuantizedWeight) for w in weights):
        return None
    arrays = [np.asarray(w) for w in weights]
    if any(a.ndim != 2 or a.shape[1] != arrays[0].shape[1] for a in arrays):
        return None
    return np.concatenate([a.astype(np.float32, copy=False) for a in arrays])


def _out(w) -> int:
    return w.out_features if isinstance(w, QuantizedWeight) else int(np.asarray(w).shape[0])


class Projections:
    def __init__(self, ops, weights: Sequence):
        self.ops = ops
        self.sizes = [_out(w) for w in weights]
        stacked = stack_rows(weights) if len(weights) > 1 else None
        if stacked is None:
            self.linears = [ops.prepare_linear(w) for w in weights]
            self.fused = None
        else:
            self.linears = None
            self.fused = ops.prepare_linear(stacked)
            self.bounds = np.cumsum([0, *self.sizes]).tolist()
        self._split = getattr(ops, "split_last", None)     # the backend's views of column blocks in one call

    def __call__(self, x) -> list:
        if self.fused is None:
            return [self.ops.linear(x, w) for w in self.linears]
        y = self.ops.linear(x, self.fused)
        if self._split is not None:
            return self._split(y, self.sizes)
        b = self.bounds
        return [y[..., b[i]:b[i + 1]] for i in range(len(self.sizes))]
