"""torch backend: CPU by default, CUDA when asked for (``device='cuda'``)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fmoe.errors import BackendError
from fmoe.kernels import gpu
from fmoe.kernels.quant import QuantizedWeight

# FMOE_FUSED=0: decode applies experts one matrix at a time (A/B of the one-call path)
_FUSED = os.environ.get("FMOE_FUSED", "1") not in ("0", "false", "no", "off")
_DT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32}


# Cached positions from which a CPU decode step's attention runs on cpu_threads() threads (_decode_attention)
THREADED_ATTENTION_POSITIONS = 2048


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` for the block, restored after (nothing done when it is n)."""
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cpu_threads() -> int:
    """Threads for torch and the native kernels: ``$FMOE_THREADS``, else 1 on machines of 1-2 cores (measured on a
    2-core VM: one core already saturates memory bandwidth for the quantized matvecs, 2 threads gave no gain on the
    demo model's prefill (0.53 s either way) and, whenever the other core was busy, parallel ops stalled waiting for
    it: index_add_ 76 ms instead of 1 ms, a 484-token prefill 36 s instead of 0.5 s), else the core count."""
    env = os.environ.get("FMOE_THREADS")
    if env:
        return max(1, int(env))
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if n <= 2 else n


# FMOE_FUSED_DELTANET=0: decode runs Gated DeltaNet as torch ops: A/B of fmoe/kernels/triton_deltanet.py on CUDA, and
# on the CPU of the native one-call step (fmoe_gdn_step) against the ~25 torch ops that give the layer's own bits
_FUSED_DELTANET = os.environ.get("FMOE_FUSED_DELTANET", "1") not in ("0", "false", "no", "off")
# FMOE_NATIVE_NORM=0: the CPU's float32 RMSNorm of a few rows as torch's op instead of one native call (fmoe_rms_norm)
_NATIVE_NORM = os.environ.get("FMOE_NATIVE_NORM", "1") not in ("0", "false", "no", "off")
_NATIVE_NORM_ROWS = 64          # rows up to which the native call (one thread) takes a norm; prefill's keep torch's


def _native_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor | None:
    """``(x * rsqrt(mean(x^2, -1) + eps)) * w`` of CPU float32 rows by one native call (``fmoe_rms_norm``, float32 as
    torch's op; the sum of squares in another order: within a few float32 ulps of it), or None without the native
    library or for a weight that is not one contiguous row of x's width."""
    from fmoe.kernels import native

    lib = native.load()
    n = x.shape[-1]
    if lib is None or w.numel() != n or not w.is_contiguous() or n == 0:
        return None
    if x.is_contiguous():                       # (decode's case, without a reshape: each torch call costs ~1 us)
        x2, rows, stride = x, x.numel() // n, n
    else:                                       # rows at one stride (a view of heads), else a copy
        x2 = x.reshape(-1, n)
        if x2.stride(1) != 1 or x2.stride(0) < n:
            x2 = x2.contiguous()
        rows, stride = x2.shape[0], x2.stride(0)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    rc = lib.fmoe_rms_norm(x2.data_ptr(), stride, w.data_ptr(), y.data_ptr(), rows, n, eps)
    if rc != 0:
        raise RuntimeError(f"fmoe_rms_norm failed with code {rc} (rows {rows}, width {n})")
    return y


class TorchBackend:
    name = "torch"
    fused_deltanet = _FUSED_DELTANET    # per instance in tests: the one-call CPU step or its torch ops
    native_norm = _NATIVE_NORM          # per instance in tests: the CPU's few-row RMSNorm by one native call

    def __init__(self, dtype: str = "float32", device: str | None = None):
        self.dtype_name = dtype
        self.dtype = _DT[dtype]
        if device in (None, "cpu"):
            self.device = torch.device("cpu")
        elif str(device).startswith("cuda"):
            if not torch.cuda.is_available():
                raise BackendError("device 'cuda' asked for but torch sees no CUDA GPU")
            self.device = torch.device(device)
        else:
            raise BackendError(f"unknown torch device {device!r} (cpu or cuda)")
        torch.set_grad_enabled(False)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads())

    @property
    def kernel_isa(self) -> str:
        """What runs the quantized matmuls: the native variant ("avx512vnni", "avx2", "generic", ...), "torch"
        without native kernels, or "cuda"."""
        if self.device.type != "cpu":
            return self.device.type
        from fmoe.kernels import native

        return native.kernel_isa()

    # --- creation / conversion
    def asarray(self, a: np.ndarray, dtype: str | None = None) -> torch.Tensor:
        a = np.ascontiguousarray(a)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
        return t.to(device=self.device, dtype=_DT[dtype] if dtype else self.dtype)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.detach().cpu().numpy()

    def zeros(self, shape: Sequence[int], dtype: str = "float32") -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=_DT[dtype], device=self.device)

    def astype(self, x: torch.Tensor, dtype: str) -> torch.Tensor:
        return x.to(_DT[dtype])

    # --- weights
    def prepare_linear(self, w: Any) -> Any:
        if isinstance(w, QuantizedWeight):
            from fmoe.kernels.torch_qlinear import TorchQLinear
            if self.device.type != "cpu":
                w = QuantizedWeight(*(torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                                      if isinstance(a, np.ndarray) else a.to(self.device)
                                      for a in (w.weight, w.scales, w.biases)), w.bits, w.group_size)
            return TorchQLinear(w, dtype=self.dtype)
        return self.asarray(np.asarray(w, dtype=np.float32))

    def linear(self, x: torch.Tensor, w: Any) -> torch.Tensor:
        if isinstance(w, torch.Tensor):
            return F.linear(x, w)
        return w(x)

    def fused_experts(self, x: torch.Tensor, experts, weights):
        """Decode (one token): ``sum_e weights[e] * down_e(silu(gate_e x) * up_e x)`` in one native call, or None
        when it does not apply (not CPU float32, or the experts are not native quantized linears of one bits /
        group size): the caller then applies the experts one matrix at a time."""
        if self.device.type != "cpu" or self.dtype != torch.float32 or x.dtype != torch.float32 or not _FUSED:
            return None
        from fmoe.kernels.torch_qlinear import FusedExperts

        f = FusedExperts.make(experts)
        if f is None:
            return None
        return f(x, weights).reshape(x.shape)

    def delta_step(self, q, k, v, g, beta, S):
        """The gated delta rule for one token in one native call (``fmoe_delta_step``, heads in parallel):
        (o [1, H, dv], new S), a new tensor (S itself is never written: snapshots may hold it); None where it does
        not apply (not CPU float32, no native kernels)."""
        if self.device.type != "cpu" or S.dtype != torch.float32 or q.dtype != torch.float32 or not _FUSED:
            return None
        from fmoe.kernels import native

        lib = native.load()
        if lib is None:
            return None
        H, dk = q.shape[1], q.shape[2]
        dv = v.shape[2]
        q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
        S = S.contiguous()
        S_out = torch.empty_like(S)
        o = torch.empty((1, H, dv), dtype=torch.float32)
        rc = lib.fmoe_delta_step(q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), beta.data_ptr(),
                                 S.data_ptr(), S_out.data_ptr(), o.data_ptr(), H, H, dk, dv, native.threads())
        if rc != 0:
            return None
        return o, S_out

    def gated_delta_step(self, qkv, z, b, a, state, layer):
        """One token of a Gated DeltaNet layer: the output before out_proj ([1, Hv*dv]), the state advanced (in place
        when it is a captured step's fixed state, else new tensors, so snapshots keep theirs). On CUDA three fused
        kernels (fmoe/kernels/triton_deltanet.py); on the CPU (float32) one native call
        (:meth:`_gated_delta_step_native`), or with ``fused_deltanet`` off :meth:`_gated_delta_step_cpu`. None where
        neither applies (no Triton, no native kernels, not float32): the layer then runs its torch ops."""
        if self.device.type == "cpu":
            if self.fused_deltanet:
                return self._gated_delta_step_native(qkv, z, b, a, state, layer)
            return self._gated_delta_step_cpu(qkv, z, b, a, state, layer)
        if self.device.type != "cuda" or not self.fused_deltanet:
            return None
        kernels = gpu.kernels("triton_deltanet")
        if kernels is None:
            return None
        C, K = qkv.shape[-1], layer.K
        conv = state.conv.contiguous() if state.conv is not None else self.zeros((K - 1, C), self.dtype_name)
        S = state.recurrent.contiguous() if state.recurrent is not None else self.zeros((layer.Hv, layer.dk, layer.dv))
        conv_out, S_out = (conv, S) if state.static else (torch.empty_like(conv), torch.empty_like(S))
        o = kernels.decode_step(qkv, z, b, a, conv, layer.conv_w, S, layer.neg_A, layer.dt_bias, layer.norm,
                                layer.cfg.rms_norm_eps, (layer.Hk, layer.Hv, layer.dk, layer.dv), conv_out, S_out)
        if not state.static:
            state.conv, state.recurrent = conv_out, S_out
        return o

    def _gated_delta_step_native(self, qkv, z, b, a, state, layer):
        """GatedDeltaNet.mix for one float32 token in one native call (``fmoe_gdn_step``: conv, norms, gates, delta
        rule and gated norm, value heads in parallel), where the ~25 torch ops of :meth:`_gated_delta_step_cpu`
        cost 30-150 us each after the mat-vecs have streamed the weights through the caches. Not the same bits as
        the torch ops (its exp and silu are float32 approximations; tests/kernels/test_delta_step.py bounds the
        difference). The state is written in place when it is a captured step's fixed tensors, else into new ones
        (a snapshot shares the tensors it was taken from)."""
        Hk, Hv, dk, dv, K = layer.Hk, layer.Hv, layer.dk, layer.dv, layer.K
        if qkv.dtype != torch.float32 or not _FUSED or Hv % Hk or dk > 4096 or dv > 4096:
            return None
        from fmoe.kernels import native

        lib = native.load()
        if lib is None:
            return None
        prm = getattr(layer, "_gdn_params", None)    # made once: conv taps [K, C] and contiguous float32 parameters
        if prm is None:
            ps = (layer.conv_w.t(), layer.neg_A, layer.dt_bias, layer.norm)
            if any(not isinstance(p, torch.Tensor) or p.dtype != torch.float32 for p in ps):
                return None
            prm = layer._gdn_params = tuple(p.contiguous().view(-1) for p in ps)
        taps, neg_A, dt_bias, norm = prm
        C = qkv.shape[-1]
        if (C != 2 * Hk * dk + Hv * dv or z.numel() != Hv * dv or a.numel() != Hv or b.numel() != Hv
                or norm.numel() != dv or taps.numel() != K * C):
            return None
        conv, S = state.conv, state.recurrent
        for t, n in ((conv, (K - 1) * C), (S, Hv * dk * dv)):
            if t is not None and (t.dtype != torch.float32 or t.numel() != n or t.device.type != "cpu"):
                return None
        if state.static:
            if conv is None or S is None or not (conv.is_contiguous() and S.is_contiguous()):
                return None
            conv_out, S_out = conv, S
        else:
            conv = conv.contiguous() if conv is not None else None
            S = S.contiguous() if S is not None else None
            conv_out = torch.empty((K - 1, C), dtype=torch.float32)
            S_out = torch.empty((Hv, dk, dv), dtype=torch.float32)
        qkv, z, b, a = (t.contiguous() for t in (qkv, z, b, a))
        y = torch.empty((1, Hv * dv), dtype=torch.float32)
        rc = lib.fmoe_gdn_step(qkv.data_ptr(), z.data_ptr(), b.data_ptr(), a.data_ptr(),
                               None if conv is None else conv.data_ptr(), conv_out.data_ptr(), taps.data_ptr(),
                               None if S is None else S.data_ptr(), S_out.data_ptr(), neg_A.data_ptr(),
                               dt_bias.data_ptr(), norm.data_ptr(), layer.cfg.rms_norm_eps, y.data_ptr(),
                               Hk, Hv, dk, dv, K, native.threads())
        if rc != 0:
            raise RuntimeError(f"fmoe_gdn_step failed with code {rc}")
        if not state.static:
            state.conv, state.recurrent = conv_out, S_out
        return y

    def _gated_delta_step_cpu(self, qkv, z, b, a, state, layer):
        """GatedDeltaNet.mix for one float32 token in about 25 torch ops instead of 65, with the same float32
        operations in the same order, so the same bits (tests/engine/test_model.py): the depthwise conv as one
        product and one sum over its K taps (the sum over the outer axis adds the taps in order, as the loop did), q
        and k normalised together, the key heads' repeat done by the native delta step (it reads key head
        h / (Hv / Hk)), the output norm in one op. Each small op costs tens of us here, after the mat-vecs have
        streamed the weights through the caches."""
        Hk, Hv, dk, dv, K = layer.Hk, layer.Hv, layer.dk, layer.dv, layer.K
        if qkv.dtype != torch.float32 or state.static or not _FUSED or Hv % Hk or dv > 4096:
            return None
        from fmoe.kernels import native

        lib = native.load()
        if lib is None:
            return None
        wt = getattr(layer, "_conv_taps", None)             # conv weight [C, K] as taps [K, C], made once
        if wt is None:
            wt = layer._conv_taps = layer.conv_w.t().contiguous()
        prev = state.conv if state.conv is not None else torch.zeros((K - 1, qkv.shape[-1]), dtype=torch.float32)
        xin = torch.cat([prev, qkv])                                           # [K, C]
        state.conv = xin[1:]
        mixed = F.silu((xin * wt).sum(0))                                       # [C]
        nq = Hk * dk
        qk = mixed[:2 * nq].view(2 * Hk, dk)
        qk = qk / torch.sqrt((qk * qk).sum(-1, keepdim=True) + 1e-6)
        q = qk[:Hk] * (dk ** -0.5)
        g = layer.neg_A * F.softplus(a + layer.dt_bias)                        # [1, Hv] log decay
        beta = torch.sigmoid(b)
        S = state.recurrent if state.recurrent is not None else torch.zeros((Hv, dk, dv), dtype=torch.float32)
        S_out = torch.empty_like(S)
        o = torch.empty((1, Hv, dv), dtype=torch.float32)
        rc = lib.fmoe_delta_step(q.data_ptr(), qk[Hk:].data_ptr(), mixed[2 * nq:].data_ptr(), g.data_ptr(),
                                 beta.data_ptr(), S.data_ptr(), S_out.data_ptr(), o.data_ptr(), Hv, Hk, dk, dv,
                                 native.threads())
        if rc != 0:
            raise RuntimeError(f"fmoe_delta_step failed with code {rc}")
        state.recurrent = S_out
        o = F.rms_norm(o, (dv,), layer.norm, layer.cfg.rms_norm_eps) * F.silu(z.view(1, Hv, dv))
        return o.view(1, Hv * dv)

    def prepare_embedding(self, w: Any) -> Any:
        if isinstance(w, QuantizedWeight):
            if self.device.type == "cpu":
                return w
            from fmoe.kernels.torch_qlinear import to_torch_quantized
            return to_torch_quantized(w, self.device)       # rows dequantized on the device (no host round trip)
        return self.asarray(np.asarray(w, dtype=np.float32))

    def repeat(self, x, r: int, axis: int):
        return x.repeat_interleave(r, dim=axis)

    def embedding(self, table: Any, ids) -> torch.Tensor:
        """Rows ``ids`` (a sequence, or an int64 tensor on the device) of a dense or quantized table."""
        if isinstance(ids, torch.Tensor):
            idx = ids
        else:
            idx = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        if isinstance(table, torch.Tensor):
            return table[idx]
        if isinstance(table.weight, torch.Tensor):
            from fmoe.kernels.torch_qlinear import dequantize_torch
            rows = QuantizedWeight(table.weight[idx], table.scales[idx], table.biases[idx], table.bits,
                                   table.group_size)
            return dequantize_torch(rows, self.dtype)
        # quantized table (mlx-community quantizes embed_tokens): dequantize the rows asked for
        from fmoe.kernels.quant import dequantize
        q, sel = table.numpy(), np.asarray(ids)
        rows = QuantizedWeight(q.weight[sel], q.scales[sel], q.biases[sel], q.bits, q.group_size)
        return self.asarray(dequantize(rows))

    # --- math
    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        if x.is_cuda:
            fused = gpu.kernels("triton_norm")
            if fused is not None:       # one kernel instead of six (fmoe/kernels/triton_norm.py)
                return fused.rms_norm(x, w, eps)
        elif x.dtype == torch.float32 and w.dtype == torch.float32:
            # CPU: decode makes ~5 norms a layer, and each small torch op after the kernels have streamed the weights
            # costs tens of us (torch's rms_norm of 4096 floats: 85-140 us in a 2-core decode, 18 us hot), so a few
            # rows go to one native call; otherwise one torch op instead of six, the same float32 steps and bits as
            # the composite form below (x * rsqrt(mean(x^2) + eps) * w; checked over norm sizes 33-4096, 1-300 rows)
            if self.native_norm and x.numel() <= _NATIVE_NORM_ROWS * x.shape[-1]:
                y = _native_rms_norm(x, w, eps)
                if y is not None:
                    return y
            return F.rms_norm(x, (x.shape[-1],), w, eps)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (y * w.float()).to(x.dtype)

    def silu(self, x):
        return F.silu(x)

    def sigmoid(self, x):
        return torch.sigmoid(x)

    def softplus(self, x):
        return F.softplus(x)

    def exp(self, x):
        return torch.exp(x)

    def sqrt(self, x):
        return torch.sqrt(x)

    def topk(self, x, k: int):
        """(values, indices) of the k largest of a 1-D ``x``, largest first (on the device: no host sync)."""
        return torch.topk(x, k)

    def softmax(self, x, axis: int = -1):
        return torch.softmax(x.float(), dim=axis)

    def split_last(self, x, sizes):
        """Views of consecutive column blocks of ``x`` (sizes along the last axis), in one op."""
        return list(torch.split(x, sizes, dim=-1))

    def concat(self, xs, axis: int):
        return torch.cat(list(xs), dim=axis)

    def swapaxes(self, x, a: int, b: int):
        return x.transpose(a, b)

    def attention(self, q, k, v, scale: float, causal_offset: int):
        """q [H, T, D], k/v [Hkv, S, D] (S = causal_offset + T); GQA by head groups (SDPA's enable_gqa: no copy of
        the KV heads, which repeat_interleave made every step: 32 query heads over 2 KV heads of 256, one CPU thread,
        S = 1024: 36 ms -> 1.5 ms an attention, the same bits); causal."""
        H, T, D = q.shape
        Hkv, S = k.shape[0], k.shape[1]
        if T == 1 and q.device.type == "cpu" and H % Hkv == 0:
            return self._decode_attention(q, k, v, scale)
        mask = None
        if T > 1:
            i = torch.arange(T, device=q.device)[:, None] + causal_offset
            j = torch.arange(S, device=q.device)[None, :]
            mask = j <= i
        return F.scaled_dot_product_attention(q[None].float(), k[None].float(), v[None].float(),
                                              attn_mask=mask, scale=scale, enable_gqa=Hkv != H)[0].to(q.dtype)

    @staticmethod
    def _decode_attention(q, k, v, scale: float):
        """One query position on the CPU: each KV head's H / Hkv query heads as the rows of one matrix product
        (scores = q k^T, softmax, p v), K and V read once; within 3e-6 of SDPA (not its bits). One thread, 32 q / 2
        kv heads of 256: 39 vs 75 us at 64 positions, 0.55 vs 1.25 ms at 1,024, 2.7 vs 9.1 ms at 4,096. From
        THREADED_ATTENTION_POSITIONS on it runs on ``cpu_threads()`` threads although decode steps run on one
        (step_context): 2 threads took 2.3 instead of 3.9 ms at 4,096 positions, 9.1 instead of 16.2 at 16,384."""
        H, _, D = q.shape
        Hkv, S = k.shape[0], k.shape[1]
        with torch_threads(cpu_threads() if S >= THREADED_ATTENTION_POSITIONS else torch.get_num_threads()):
            qg = q.float().reshape(Hkv, H // Hkv, D)
            p = torch.softmax(torch.bmm(qg, k.float().transpose(1, 2)) * scale, dim=-1)
            return torch.bmm(p, v.float()).reshape(H, 1, D).to(q.dtype)

    def attention_masked(self, q, k, v, scale: float, mask):
        """One query position over a whole KV buffer: q [H, 1, D], k/v [Hkv, C, D], mask [C] bool (the positions
        written so far); GQA without repeating the buffer. For captured decode steps (fixed shapes)."""
        o = F.scaled_dot_product_attention(q[None].float(), k[None].float(), v[None].float(),
                                           attn_mask=mask[None, None, None, :], scale=scale,
                                           enable_gqa=k.shape[0] != q.shape[0])      # float32, as ``attention``
        return o[0].to(q.dtype)

    def index_add(self, out, idx: np.ndarray, y):
        return out.index_add_(0, torch.as_tensor(idx, device=out.device), y.to(out.dtype))

    def take_rows(self, x, idx: np.ndarray):
        return x[torch.as_tensor(idx, device=x.device)]

    @contextmanager
    def step_context(self, tokens: int):
        """Decode steps (a few tokens) run single-threaded on the CPU: their ops are too small to split, and on a
        busy 2-core machine waking a second thread for each of them cost up to 100x (a Gated DeltaNet decode step:
        0.39 ms on 1 thread, 47 ms on 2); one core already saturates memory bandwidth for the quantized matvecs."""
        if self.device.type != "cpu" or tokens > 4:
            yield
            return
        with torch_threads(1):
            yield

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
