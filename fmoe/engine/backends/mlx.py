"""MLX backend (Apple silicon; also runs, slowly, on Linux CPUs through ``mlx[cpu]``)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Sequence

import mlx.core as mx
import numpy as np

from fmoe.kernels.quant import QuantizedWeight

_DT = {"float32": mx.float32, "bfloat16": mx.bfloat16, "int64": mx.int64, "int32": mx.int32}


class MLXQLinear:
    """mlx affine quantized weight applied with ``mx.quantized_matmul``."""

    def __init__(self, q: QuantizedWeight, dtype):
        q = q.numpy()
        self.w = mx.array(q.weight)
        self.scales = self._scales(q.scales, dtype)
        self.biases = self._scales(q.biases, dtype)
        self.bits, self.group_size = q.bits, q.group_size

    @staticmethod
    def _scales(a: np.ndarray, dtype):
        if a.dtype == np.uint16:           # bf16 bit patterns
            return mx.array(a).view(mx.bfloat16).astype(dtype)
        return mx.array(a).astype(dtype)

    def __call__(self, x):
        return mx.quantized_matmul(x, self.w, self.scales, self.biases, transpose=True,
                                   group_size=self.group_size, bits=self.bits)


class MLXBackend:
    name = "mlx"
    kernel_isa = "mlx"  # quantized matmuls run in mlx (fmoe generate --json reports it)

    def __init__(self, dtype: str = "float32"):
        self.dtype_name = dtype
        self.dtype = _DT[dtype]

    def asarray(self, a: np.ndarray, dtype: str | None = None):
        return mx.array(np.ascontiguousarray(a)).astype(_DT[dtype] if dtype else self.dtype)

    def to_numpy(self, x) -> np.ndarray:
        if x.dtype == mx.bfloat16:
            x = x.astype(mx.float32)
        return np.array(x, copy=False)

    def zeros(self, shape: Sequence[int], dtype: str = "float32"):
        return mx.zeros(tuple(shape), dtype=_DT[dtype])

    def astype(self, x, dtype: str):
        return x.astype(_DT[dtype])

    def prepare_linear(self, w: Any):
        if isinstance(w, QuantizedWeight):
            return MLXQLinear(w, self.dtype)
        return self.asarray(np.asarray(w, dtype=np.float32))

    def linear(self, x, w):
        if isinstance(w, mx.array):
            return x @ w.T
        return w(x)

    def prepare_switch(self, stacked):
        """A layer's experts stacked ([E, out, in] QuantizedWeights for gate, up, down) for :meth:`switch_glu`, or
        None when they are not all quantized with one bits / group size."""
        if not all(isinstance(q, QuantizedWeight) for q in stacked):
            return None
        if len({(q.bits, q.group_size) for q in stacked}) != 1 or len(stacked[0].weight.shape) != 3:
            return None
        return tuple(MLXQLinear(q, self.dtype) for q in stacked)

    def switch_glu(self, x, stacked, ids: np.ndarray, weights: np.ndarray):
        """``sum_j weights[t, j] * down_e(silu(gate_e x_t) * up_e x_t)`` with e = ids[t, j], for x [T, H], as mlx-lm's
        SwitchGLU: ``mx.gather_qmm`` over the stacked experts (tokens sorted by expert when there are many)."""
        gate, up, down = stacked
        idx = mx.array(np.ascontiguousarray(ids, dtype=np.uint32))
        xe = mx.expand_dims(x, (-2, -3))  # [T, 1, 1, H]
        do_sort = idx.size >= 64
        inv = None
        sidx = idx
        if do_sort:
            k = idx.shape[-1]
            flat = idx.flatten()
            order = mx.argsort(flat)
            inv = mx.argsort(order)
            xe, sidx = xe.flatten(0, -3)[order // k], flat[order]

        def qmm(a, lin):
            return mx.gather_qmm(a, lin.w, lin.scales, lin.biases, rhs_indices=sidx, transpose=True,
                                 group_size=lin.group_size, bits=lin.bits, sorted_indices=do_sort)

        h = self.silu(qmm(xe, gate)) * qmm(xe, up)
        y = qmm(h, down)
        if do_sort:
            y = mx.unflatten(y[inv], 0, idx.shape)
        y = y.squeeze(-2)  # [T, k, H]
        w = mx.array(np.ascontiguousarray(weights, dtype=np.float32)).astype(y.dtype)
        return (y * w[..., None]).sum(axis=-2)

    def prepare_embedding(self, w: Any):
        return self.prepare_linear(w)

    def repeat(self, x, r: int, axis: int):
        return mx.repeat(x, r, axis=axis)

    def embedding(self, table, ids: Sequence[int]):
        idx = mx.array(np.asarray(ids, dtype=np.int32))
        if isinstance(table, mx.array):
            return table[idx]
        rows = mx.dequantize(table.w[idx], table.scales[idx], table.biases[idx],
                             group_size=table.group_size, bits=table.bits)
        return rows.astype(self.dtype)

    def rms_norm(self, x, w, eps: float):
        return mx.fast.rms_norm(x.astype(mx.float32), w.astype(mx.float32), eps).astype(x.dtype)

    def silu(self, x):
        return x * mx.sigmoid(x)

    def sigmoid(self, x):
        return mx.sigmoid(x)

    def softplus(self, x):
        return mx.logaddexp(x, mx.zeros_like(x))

    def exp(self, x):
        return mx.exp(x)

    def sqrt(self, x):
        return mx.sqrt(x)

    def softmax(self, x, axis: int = -1):
        return mx.softmax(x.astype(mx.float32), axis=axis, precise=True)

    def concat(self, xs, axis: int):
        return mx.concatenate(list(xs), axis=axis)

    def swapaxes(self, x, a: int, b: int):
        return mx.swapaxes(x, a, b)

    def attention(self, q, k, v, scale: float, causal_offset: int):
        H, T, D = q.shape
        Hkv, S = k.shape[0], k.shape[1]
        if Hkv != H:
            k = mx.repeat(k, H // Hkv, axis=0)
            v = mx.repeat(v, H // Hkv, axis=0)
        s = (q.astype(mx.float32) @ mx.swapaxes(k.astype(mx.float32), -1, -2)) * scale
        if T > 1:
            i = mx.arange(T)[:, None] + causal_offset
            j = mx.arange(S)[None, :]
            s = mx.where(j <= i, s, mx.array(-np.inf, dtype=mx.float32))
        p = mx.softmax(s, axis=-1, precise=True)
        return (p @ v.astype(mx.float32)).astype(q.dtype)

    def index_add(self, out, idx: np.ndarray, y):
        return out.at[mx.array(idx)].add(y.astype(out.dtype))

    def take_rows(self, x, idx: np.ndarray):
        return x[mx.array(idx)]

    @contextmanager
    def step_context(self, tokens: int):
        yield

    def sync(self) -> None:
        pass
