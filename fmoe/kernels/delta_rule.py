"""The gated delta rule (Gated DeltaNet's recurrence), written once for torch and MLX arrays.

Per value head h, with state ``S`` [dk, dv] (float32):
``S = exp(g)·S;  S = S + k ⊗ (beta·(v − Sᵀk));  o = Sᵀq``.
``recurrent`` steps token by token (decode, and prefill as an efficient loop); ``chunked`` processes a prefill
chunk with matrix products in blocks of ``chunk`` tokens (the WY form transformers' ``torch_chunk_gated_delta_rule``
uses), which is what makes long prompts cheap on the torch backend.
"""
from __future__ import annotations

from typing import Any


def recurrent(ops, q, k, v, g, beta, S):
    """q, k [T, H, dk]; v [T, H, dv]; g (log decay), beta [T, H]; S [H, dk, dv] -> (o [T, H, dv], S)."""
    T = q.shape[0]
    step = getattr(ops, "delta_step", None)      # one token, torch CPU float32: one native call (qmv.cpp)
    if T == 1 and step is not None:
        got = step(q, k, v, g, beta, S)
        if got is not None:
            return got
    outs = []
    for t in range(T):
        S = S * ops.exp(g[t])[:, None, None]
        kt = k[t][:, None, :]                                   # [H, 1, dk]
        kv = kt @ S                                             # [H, 1, dv]
        delta = (v[t][:, None, :] - kv) * beta[t][:, None, None]
        S = S + ops.swapaxes(kt, -1, -2) @ delta                  # [H, dk, dv]
        outs.append(q[t][:, None, :] @ S)                       # [H, 1, dv]
    return ops.swapaxes(ops.concat(outs, axis=1), 0, 1), S


def chunked(q: Any, k: Any, v: Any, g: Any, beta: Any, S: Any, chunk: int = 64):
    """torch only: the same recurrence over T tokens in blocks (UT/WY transform within a block)."""
    import torch

    T, H, dk = q.shape
    dv = v.shape[-1]
    pad = (-T) % chunk
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (g, beta))
    n = (T + pad) // chunk
    # [H, n, C, d]
    q, k, v = (x.transpose(0, 1).reshape(H, n, chunk, -1) for x in (q, k, v))
    g = g.transpose(0, 1).reshape(H, n, chunk)
    beta = beta.transpose(0, 1).reshape(H, n, chunk)
    kb = k * beta[..., None]
    vb = v * beta[..., None]
    gc = g.cumsum(-1)                                                       # [H, n, C]
    tri = torch.triu(torch.ones(chunk, chunk, dtype=torch.bool, device=q.device), 0)
    decay = (gc[..., :, None] - gc[..., None, :]).tril().exp().tril()      # [H, n, C, C]
    A = -((kb @ k.transpose(-1, -2)) * decay).masked_fill(tri, 0)
    for i in range(1, chunk):
        row = A[..., i, :i].clone()
        sub = A[..., :i, :i].clone()
        A[..., i, :i] = row + (row.unsqueeze(-1) * sub).sum(-2)
    A = A + torch.eye(chunk, dtype=A.dtype, device=A.device)
    u = A @ vb                                                              # [H, n, C, dv]
    w = A @ (kb * gc.exp()[..., None])                                     # [H, n, C, dk]
    out = torch.zeros_like(u)
    strict = torch.triu(torch.ones(chunk, chunk, dtype=torch.bool, device=q.device), 1)
    for i in range(n):
        qi, ki, ui, wi = q[:, i], k[:, i], u[:, i], w[:, i]
        attn = (qi @ ki.transpose(-1, -2) * decay[:, i]).masked_fill(strict, 0)
        v_new = ui - wi @ S
        o_inter = (qi * gc[:, i, :, None].exp()) @ S
        out[:, i] = o_inter + attn @ v_new
        last = gc[:, i, -1]
        S = S * last.exp()[:, None, None] + (ki * (last[:, None] - gc[:, i]).exp()[..., None]).transpose(-1, -2) @ v_new
    out = out.reshape(H, n * chunk, dv)[:, :T].transpose(0, 1)
    return out, S
