"""Gated DeltaNet (Qwen3.5 / Qwen3-Next linear attention) for a chunk of T tokens with conv + recurrent state."""
from __future__ import annotations


from fmoe.engine.cache import LinearState
from fmoe.storage.config import ModelConfig
from fmoe.kernels import delta_rule


class GatedDeltaNet:
    CHUNKED_MIN_TOKENS = 32   # torch prefill chunks at least this long use the chunked (matrix) form

    def __init__(self, ops, cfg: ModelConfig, weights: dict):
        self.ops, self.cfg = ops, cfg
        self.in_proj, self.out_proj = weights["in_proj"], weights["out_proj"]   # in_proj: qkv, z, b, a (Projections)
        self.conv_w = weights["conv1d"]                         # [C, K]
        self.neg_A = -ops.exp(weights["A_log"])                   # float32 [Hv]
        self.dt_bias, self.norm = weights["dt_bias"], weights["norm"]
        self.Hk, self.Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.dk, self.dv, self.K = cfg.linear_key_head_dim, cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim

    def _conv(self, qkv, state: LinearState):
        """Depthwise causal conv (kernel K) over time, then SiLU; keeps the last K-1 inputs as state."""
        ops, T, K = self.ops, qkv.shape[0], self.K
        prev = state.conv if state.conv is not None else ops.zeros((K - 1, qkv.shape[1]), self.ops.dtype_name)
        xin = ops.concat([prev, qkv], axis=0)                                 # [T+K-1, C]
        if state.static:
            state.conv.copy_(xin[T:])         # a captured decode step's fixed tensor (fmoe/engine/cuda_graph.py)
        else:
            state.conv = xin[T:]
        out = xin[0:T] * self.conv_w[:, 0]
        for j in range(1, K):
            out = out + xin[j:j + T] * self.conv_w[:, j]
        return ops.silu(out)

    def __call__(self, x, state: LinearState):
        qkv, z, b, a = self.in_proj(x)
        step = getattr(self.ops, "gated_delta_step", None)     # one token on CUDA: three fused kernels
        o = step(qkv, z, b, a, state, self) if x.shape[0] == 1 and step is not None else None
        if o is None:
            o = self.mix(qkv, z, b, a, state)
        return self.ops.linear(o, self.out_proj)

    def mix(self, qkv, z, b, a, state: LinearState):
        """The projections of T tokens -> the gated, normalised output [T, Hv*dv] (before out_proj); state updated."""
        ops, T = self.ops, qkv.shape[0]
        Hk, Hv, dk, dv = self.Hk, self.Hv, self.dk, self.dv
        mixed = self._conv(qkv, state)
        z = z.reshape(T, Hv, dv)
        f32 = lambda t: ops.astype(t, "float32")
        q = f32(mixed[:, :Hk * dk]).reshape(T, Hk, dk)
        k = f32(mixed[:, Hk * dk:2 * Hk * dk]).reshape(T, Hk, dk)
        v = f32(mixed[:, 2 * Hk * dk:]).reshape(T, Hv, dv)
        q = q / ops.sqrt((q * q).sum(-1)[..., None] + 1e-6) * (dk ** -0.5)
        k = k / ops.sqrt((k * k).sum(-1)[..., None] + 1e-6)
        if Hv != Hk:
            q, k = ops.repeat(q, Hv // Hk, 1), ops.repeat(k, Hv // Hk, 1)
        g = self.neg_A * ops.softplus(f32(a) + self.dt_bias)                   # [T, Hv] log decay
        beta = ops.sigmoid(f32(b))
        S = state.recurrent if state.recurrent is not None else ops.zeros((Hv, dk, dv), "float32")
        if ops.name == "torch" and T >= self.CHUNKED_MIN_TOKENS:
            o, S = delta_rule.chunked(q, k, v, g, beta, S)
        else:
            o, S = delta_rule.recurrent(ops, q, k, v, g, beta, S)
        if state.static:
            state.recurrent.copy_(S)
        else:
            state.recurrent = S
        o = ops.astype(ops.rms_norm(o, self.norm, self.cfg.rms_norm_eps), "float32") * ops.silu(f32(z))
        return ops.astype(o, ops.dtype_name).reshape(T, Hv * dv)
