"""Quantized test weights with edge cases, and the relative error, shared by the kernel tests (test_kernels.py, which
needs mlx, and test_isa_variants.py, which does not).

    from quant_cases import edge_weights, experts, rel_err
    q = quantize(edge_weights(rng, out=70, inp=512, group_size=64), 4, 64)
    assert rel_err(y, ref) <= 1e-3
"""
from __future__ import annotations

import numpy as np

from fmoe.kernels.quant import quantize


def edge_weights(rng, out=24, inp=256, group_size=32):
    """float32 [out, inp] weights, with an all-zero group, a constant group, all-positive / all-negative groups and
    an outlier."""
    w = (rng.standard_normal((out, inp)) * 0.05).astype(np.float32)
    w[0, :group_size] = 0.0
    w[1, :group_size] = 0.75
    w[2, :group_size] = np.abs(w[2, :group_size])
    w[3, :group_size] = -np.abs(w[3, :group_size])
    w[4, 5] = 3.0
    return w


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def experts(rng, bits, group_size, hidden, inters):
    """Quantized (gate, up, down) of one expert per intermediate size in ``inters``."""
    out = []
    for inter in inters:
        g = quantize(edge_weights(rng, out=inter, inp=hidden, group_size=group_size), bits, group_size)
        u = quantize(edge_weights(rng, out=inter, inp=hidden, group_size=group_size), bits, group_size)
        d = quantize(edge_weights(rng, out=hidden, inp=inter, group_size=group_size) * 3, bits, group_size)
        out.append((g, u, d))
    return out
