"""Gated full attention: q/k RMSNorms per head, partial rotate-half RoPE, GQA, output gated by sigmoid."""
from __future__ import annotations

import numpy as np

from fmoe.engine.cache import AttentionState
from fmoe.engine.config import ModelConfig


class RoPE:
    """Rotary embedding on the first ``rotary_dim`` dims of each head (rotate-half style)."""

    def __init__(self, B, cfg: ModelConfig):
        self.B = B
        self.dim = cfg.rotary_dim
        self.inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, self.dim, 2, dtype=np.float32) / self.dim))

    def tables(self, start: int, T: int):
        pos = np.arange(start, start + T, dtype=np.float32)[:, None]
        freqs = (pos * self.inv_freq[None, :]).astype(np.float32)
        emb = np.concatenate([freqs, freqs], axis=-1)
        return self.B.asarray(np.cos(emb)), self.B.asarray(np.sin(emb))      # [T, dim]

    def apply(self, x, cos, sin):
        """x [T, H, D]."""
        B, d = self.B, self.dim
        xr, xp = x[..., :d], x[..., d:]
        half = d // 2
        rot = B.concat([-xr[..., half:], xr[..., :half]], axis=-1)
        xr = xr * cos[:, None, :] + rot * sin[:, None, :]
        return B.concat([xr, xp], axis=-1) if xp.shape[-1] else xr


class GatedAttention:
    def __init__(self, B, cfg: ModelConfig, w: dict):
        self.B, self.cfg = B, cfg
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (w[n] for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.q_norm, self.k_norm = w["q_norm"], w["k_norm"]
        self.scale = cfg.head_dim ** -0.5

    def __call__(self, x, state: AttentionState, rope: RoPE, cos, sin, offset: int):
        B, cfg = self.B, self.cfg
        T, D, Hq, Hkv = x.shape[0], cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        qg = B.linear(x, self.q_proj).reshape(T, Hq, 2 * D)
        q, gate = qg[..., :D], qg[..., D:].reshape(T, Hq * D)
        q = B.rms_norm(q, self.q_norm, cfg.rms_norm_eps)
        k = B.rms_norm(B.linear(x, self.k_proj).reshape(T, Hkv, D), self.k_norm, cfg.rms_norm_eps)
        v = B.linear(x, self.v_proj).reshape(T, Hkv, D)
        q, k = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
        k, v = B.swapaxes(k, 0, 1), B.swapaxes(v, 0, 1)                       # [Hkv, T, D]
        if state.keys is not None:
            k = B.concat([state.keys, k], axis=1)
            v = B.concat([state.values, v], axis=1)
        state.keys, state.values = k, v
        o = B.attention(B.swapaxes(q, 0, 1), k, v, self.scale, offset)       # [Hq, T, D]
        o = B.swapaxes(o, 0, 1).reshape(T, Hq * D) * B.sigmoid(gate)
        return B.linear(o, self.o_proj)
