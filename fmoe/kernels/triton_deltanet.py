"""One Gated DeltaNet decode step (one token) on the GPU in three Triton kernels instead of about fifty small torch
ops: the causal conv with its state, the gated delta rule on the recurrent state, the gated RMSNorm of the output.

    o = decode_step(qkv, z, b, a, conv_state, conv_w, S, neg_A, dt_bias, norm_w, eps, dims, conv_out, S_out)

Inputs are one token's projections (``qkv`` [C], ``z`` [Hv*dv], ``b``/``a`` [Hv]), the layer's parameters and its
state (``conv_state`` [K-1, C], ``S`` [Hv, dk, dv] float32). The new state is written to ``conv_out``/``S_out``:
the same tensors for a captured step's fixed state (updated in place), fresh ones otherwise. Returns ``o``
[1, Hv*dv] in qkv's dtype, ready for ``out_proj``. The math is fmoe/engine/gated_deltanet.py's for T = 1 (conv then
SiLU; q, k L2-normalised, q scaled by dk^-1/2, key heads shared by Hv/Hk value heads; g = -exp(A_log) *
softplus(a + dt_bias), beta = sigmoid(b); S = e^g S; S += k (beta (v - S^T k))^T; o = S^T q; RMSNorm(o) * silu(z)),
computed in float32 throughout. ``TRITON_INTERPRET=1`` runs it on the CPU (the tests do where no GPU exists).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_step(x_ptr, state_ptr, w_ptr, out_state_ptr, y_ptr, C, K: tl.constexpr, BLOCK: tl.constexpr):
    """y[c] = silu(sum_j state[j, c] w[c, j] + x[c] w[c, K-1]); the state shifts by one row (x enters last)."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = c < C
    x = tl.load(x_ptr + c, mask=m, other=0).to(tl.float32)
    acc = x * tl.load(w_ptr + c * K + (K - 1), mask=m, other=0).to(tl.float32)
    prev = tl.load(state_ptr + c, mask=m, other=0)
    for j in tl.static_range(K - 1):
        acc += prev.to(tl.float32) * tl.load(w_ptr + c * K + j, mask=m, other=0).to(tl.float32)
        if j + 1 < K - 1:
            nxt = tl.load(state_ptr + (j + 1) * C + c, mask=m, other=0)
            tl.store(out_state_ptr + j * C + c, nxt, mask=m)
            prev = nxt
    tl.store(out_state_ptr + (K - 2) * C + c, x.to(out_state_ptr.dtype.element_ty), mask=m)
    tl.store(y_ptr + c, acc / (1.0 + tl.exp(-acc)), mask=m)


@triton.jit
def _delta_step(mixed_ptr, a_ptr, b_ptr, neg_a_ptr, dt_ptr, s_ptr, s_out_ptr, o_ptr,
                HK: tl.constexpr, HV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr):
    """Program (h, v-block): the BV columns of value head h's state [DK, DV]."""
    h = tl.program_id(0)
    vb = tl.program_id(1) * BV + tl.arange(0, BV)
    kk = tl.arange(0, DK)
    hk = h // (HV // HK)
    q = tl.load(mixed_ptr + hk * DK + kk)
    k = tl.load(mixed_ptr + HK * DK + hk * DK + kk)
    v = tl.load(mixed_ptr + 2 * HK * DK + h * DV + vb)
    q = q / tl.sqrt(tl.sum(q * q, axis=0) + 1e-6) * (DK ** -0.5)
    k = k / tl.sqrt(tl.sum(k * k, axis=0) + 1e-6)
    a = tl.load(a_ptr + h).to(tl.float32) + tl.load(dt_ptr + h)
    softplus = tl.where(a > 20.0, a, tl.log(1.0 + tl.exp(a)))
    g = tl.load(neg_a_ptr + h) * softplus
    beta = 1.0 / (1.0 + tl.exp(-tl.load(b_ptr + h).to(tl.float32)))
    offs = h.to(tl.int64) * DK * DV + kk[:, None] * DV + vb[None, :]
    S = tl.load(s_ptr + offs) * tl.exp(g)
    kv = tl.sum(k[:, None] * S, axis=0)
    delta = (v - kv) * beta
    S = S + k[:, None] * delta[None, :]
    tl.store(s_out_ptr + offs, S)
    tl.store(o_ptr + h * DV + vb, tl.sum(q[:, None] * S, axis=0))


@triton.jit
def _gated_norm(o_ptr, z_ptr, w_ptr, y_ptr, eps, DV: tl.constexpr):
    """Per value head: RMSNorm(o) * w * silu(z), stored in y's dtype."""
    h = tl.program_id(0)
    d = tl.arange(0, DV)
    o = tl.load(o_ptr + h * DV + d)
    o = o / tl.sqrt(tl.sum(o * o, axis=0) / DV + eps) * tl.load(w_ptr + d).to(tl.float32)
    z = tl.load(z_ptr + h * DV + d).to(tl.float32)
    tl.store(y_ptr + h * DV + d, (o * (z / (1.0 + tl.exp(-z)))).to(y_ptr.dtype.element_ty))


def decode_step(qkv, z, b, a, conv_state, conv_w, S, neg_A, dt_bias, norm_w, eps: float, dims: tuple,
                conv_out, S_out):
    Hk, Hv, dk, dv = dims
    C = qkv.shape[-1]
    K = conv_w.shape[-1]
    dev = qkv.device
    mixed = torch.empty(C, dtype=torch.float32, device=dev)
    _conv_step[(triton.cdiv(C, 1024),)](qkv.reshape(-1), conv_state, conv_w, conv_out, mixed, C, K=K, BLOCK=1024,
                                         num_warps=4)
    o = torch.empty(Hv * dv, dtype=torch.float32, device=dev)
    bv = min(32, dv)
    _delta_step[(Hv, dv // bv)](mixed, a.reshape(-1), b.reshape(-1), neg_A, dt_bias, S, S_out, o,
                                HK=Hk, HV=Hv, DK=dk, DV=dv, BV=bv, num_warps=4)
    y = torch.empty((1, Hv * dv), dtype=qkv.dtype, device=dev)
    _gated_norm[(Hv,)](o, z.reshape(-1), norm_w, y, float(eps), DV=dv, num_warps=1)
    return y
