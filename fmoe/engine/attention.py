"""Gated full attention: q/k RMSNorms per head, partial rotate-half RoPE, GQA, output gated by sigmoid."""
from __future__ import annotations

import numpy as np

from fmoe.engine.cache import AttentionState
from fmoe.storage.config import ModelConfig


class RoPE:
    """Rotary embedding on the first ``rotary_dim`` dims of each head (rotate-half style)."""

    def __init__(self, ops, cfg: ModelConfig):
        self.ops = ops
        self.dim = cfg.rotary_dim
        self.inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, self.dim, 2, dtype=np.float32) / self.dim))

    def tables(self, start: int, T: int):
        pos = np.arange(start, start + T, dtype=np.float32)[:, None]
        freqs = (pos * self.inv_freq[None, :]).astype(np.float32)
        emb = np.concatenate([freqs, freqs], axis=-1)
        return self.ops.asarray(np.cos(emb)), self.ops.asarray(np.sin(emb))      # [T, dim]

    def apply(self, x, cos, sin):
        """x [T, H, D]."""
        ops, d = self.ops, self.dim
        xr, xp = x[..., :d], x[..., d:]
        half = d // 2
        rot = ops.concat([-xr[..., half:], xr[..., :half]], axis=-1)
        xr = xr * cos[:, None, :] + rot * sin[:, None, :]
        return ops.concat([xr, xp], axis=-1) if xp.shape[-1] else xr


class GatedAttention:
    def __init__(self, ops, cfg: ModelConfig, weights: dict):
        self.ops, self.cfg = ops, cfg
        self.qkv, self.o_proj = weights["qkv"], weights["o_proj"]       # qkv: fmoe.engine.projections.Projections
        self.q_norm, self.k_norm = weights["q_norm"], weights["k_norm"]
        self.scale = cfg.head_dim ** -0.5

    def __call__(self, x, state: AttentionState, rope: RoPE, cos, sin, offset: int):
        ops, cfg = self.ops, self.cfg
        T, D, Hq, Hkv = x.shape[0], cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        qg, k, v = self.qkv(x)
        qg = qg.reshape(T, Hq, 2 * D)
        q, gate = qg[..., :D], qg[..., D:].reshape(T, Hq * D)
        q = ops.rms_norm(q, self.q_norm, cfg.rms_norm_eps)
        k = ops.rms_norm(k.reshape(T, Hkv, D), self.k_norm, cfg.rms_norm_eps)
        v = v.reshape(T, Hkv, D)
        q, k = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
        k, v = ops.swapaxes(k, 0, 1), ops.swapaxes(v, 0, 1)                       # [Hkv, T, D]
        if isinstance(offset, int):
            state.append(ops, k, v)                                               # in place (cache.py)
            o = ops.attention(ops.swapaxes(q, 0, 1), state.keys, state.values, self.scale, offset)   # [Hq, T, D]
        else:   # a captured decode step (fmoe/engine/cuda_graph.py): position and mask are device tensors
            state.write_at(offset.pos, k, v)
            o = ops.attention_masked(ops.swapaxes(q, 0, 1), state.buf.k, state.buf.v, self.scale, offset.mask)
        o = ops.swapaxes(o, 0, 1).reshape(T, Hq * D) * ops.sigmoid(gate)
        return ops.linear(o, self.o_proj)
