"""Quantized linear layers for torch: y = x @ dequantize(q).T on mlx's affine packed format.

``TorchQLinear(q, dtype)`` prepares once (zero-copy: it keeps the mlx packed words and bf16 scales/biases as they
are, no repacking) and ``__call__(x[..., in]) -> [..., out]``:

* CPU, up to ``NATIVE_MAX_ROWS`` rows (decode): the native kernel from ``qmv.cpp`` (the AVX-512/AVX2/generic variant
  the CPU runs, see ``native.py``), threads = ``native.threads()`` (physical cores or ``$FMOE_THREADS``); the GIL is released during the call.  By default the activations are
  quantized per group to int16 (scale = max|x_g| / 32767, i.e. a relative error <= 2^-16 of the group's largest
  |x|, far finer than bf16), products and sums are exact integers (vpmaddwd) and each group is scaled in float32;
  ``exact=True`` (or ``FMOE_QMV_EXACT=1``) keeps float32 activations and float32 FMAs instead (slower).  In both
  cases the result is float32, cast to ``dtype``; bf16 activations are widened first.  The Python + ctypes work
  around the kernel is ~3.7 us a call on the 2-core EPYC (was ~8.7 us; ``bench/device/cpu_call_overhead.py``):
  the layer's constant arguments are ctypes objects made once, and a fresh float32 output is made per call.
* CPU, more rows (prefill): native dequantize to float32 (bit-identical to ``quant.dequantize``), one float32
  GEMM, result cast to ``dtype``.
* CUDA tensors of up to ``GPU_QMV_MAX_ROWS`` rows (decode): the grouped mat-vec on the packed weight
  (fmoe/kernels/grouped_qmv.py: the CUDA C++ kernel, else Triton).
* Larger CUDA inputs, or no C++ compiler: dequantize with torch ops (on the tensors' device) to ``dtype``, one
  matmul.

``TorchQLinear.reference(x)`` is the pure torch path (dequantize in float32, float32 matmul) kept for
correctness comparisons.
"""

from __future__ import annotations

import ctypes
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from . import gpu, native
from .quant import QuantizedWeight, _scales_to_f32, check_bits_group

__all__ = ["TorchQLinear", "FusedExperts", "dequantize_torch", "to_torch_quantized", "NATIVE_MAX_ROWS"]

# Up to this many rows the native mat-vec kernel runs (weights decoded once per row of x, from L1); above, the
# weight is dequantized (native) and multiplied with one float32 GEMM.  Measured crossover: docs/log/kernels.md.
NATIVE_MAX_ROWS = int(os.environ.get("FMOE_QMV_MAX_ROWS", "64"))
# While not None, native calls add their time, count and weight bytes here (``fmoe bench decode --model``: time in
# kernels vs the rest of a token).  Set it with :func:`profile`.
PROFILE: dict | None = None


def profile(on: bool = True) -> dict | None:
    """Start (reset) or stop counting native kernel time; returns the counters (``kernel_s``, ``calls``, ``bytes``)."""
    global PROFILE
    prev = PROFILE
    PROFILE = {"kernel_s": 0.0, "calls": 0, "bytes": 0} if on else None
    return prev


# Default of TorchQLinear(exact=None): float32 activations in the native kernel instead of int16.
_EXACT_DEFAULT = os.environ.get("FMOE_QMV_EXACT", "0") not in ("0", "", "false", "no", "off")

_F32 = torch.float32
_VP = ctypes.c_void_p
# the decode path's result cast (Tensor.bfloat16(y) is ~1.5 us faster than y.to(torch.bfloat16); same values)
_CAST = {torch.bfloat16: torch.Tensor.bfloat16, torch.float16: torch.Tensor.half}
_QMV_PROTO = ctypes.CFUNCTYPE(ctypes.c_int)


def _raw_qmv(fn):
    """The C function behind the ctypes function ``fn`` as a pointer without argtypes: the caller passes ctypes
    objects (c_void_p, c_int64) for the pointer and 64-bit parameters and Python ints only for the C ``int`` ones
    (see native._SIGNATURES["fmoe_qmv"]), so each argument goes to libffi as it is, with no ``from_param``
    conversion (that conversion was ~1 us of a call).  The GIL is released during the call, as with ``fn``."""
    raw = _QMV_PROTO(ctypes.cast(fn, ctypes.c_void_p).value)
    raw._keep = fn  # the library stays loaded while the pointer is in use
    return raw


def _np_to_torch(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    if a.dtype == np.uint32:
        a = a.view(np.int32)
    elif a.dtype == np.uint16:
        a = a.view(np.int16)
    if not a.flags.writeable:
        with warnings.catch_warnings():  # read-only (mmap/frombuffer) arrays: torch never writes to these tensors
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(a)


def _weight_tensor(w: Any) -> torch.Tensor:
    """Packed words as an int32 tensor (same bits as the uint32 words)."""
    if isinstance(w, torch.Tensor):
        if w.dtype == torch.int32:
            return w
        if w.dtype == getattr(torch, "uint32", None):
            return w.view(torch.int32)
        raise ValueError(f"packed weight tensor must be int32/uint32, got {w.dtype}")
    a = np.asarray(w)
    if a.dtype not in (np.uint32, np.int32):
        raise ValueError(f"packed weight must be uint32, got {a.dtype}")
    return _np_to_torch(a)


def _scale_tensor(s: Any) -> torch.Tensor:
    """Scales/biases as a bf16 or float tensor (uint16/int16 bit patterns are viewed as bf16)."""
    if isinstance(s, torch.Tensor):
        if s.dtype in (torch.int16, getattr(torch, "uint16", torch.int16)):
            return s.view(torch.int16).view(torch.bfloat16)
        if s.dtype in (torch.bfloat16, torch.float32, torch.float16):
            return s
        raise ValueError(f"unsupported scales/biases dtype {s.dtype}")
    a = np.asarray(s)
    if a.dtype in (np.uint16, np.int16):
        return _np_to_torch(a).view(torch.bfloat16)
    if a.dtype in (np.float32, np.float16):
        return _np_to_torch(a)
    raise ValueError(f"unsupported scales/biases dtype {a.dtype}")


def to_torch_quantized(q: QuantizedWeight, device: torch.device | str | None = None) -> QuantizedWeight:
    """The same QuantizedWeight with torch tensors (int32 words, bf16/float scales), optionally moved to ``device``."""
    w, s, b = _weight_tensor(q.weight), _scale_tensor(q.scales), _scale_tensor(q.biases)
    if device is not None:
        w, s, b = w.to(device), s.to(device), b.to(device)
    return QuantizedWeight(w, s, b, q.bits, q.group_size)


GPU_QMV_MAX_ROWS = 8   # CUDA: up to this many rows run the grouped mat-vec (fmoe/kernels/grouped_qmv.py)
_ZERO_SLOTS: dict = {}


def _zero_slots(rows: int, device) -> torch.Tensor:
    key = (rows, str(device))
    if key not in _ZERO_SLOTS:
        _ZERO_SLOTS[key] = torch.zeros(rows, dtype=torch.int32, device=device)
    return _ZERO_SLOTS[key]


def dequantize_torch(q: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale * q + bias`` computed in float32 with torch ops on q's device, returned as ``dtype``.

    In float32 this is bit-identical to :func:`fmoe.kernels.quant.dequantize`.
    """
    check_bits_group(q.bits, q.group_size)
    w = _weight_tensor(q.weight)
    s = _scale_tensor(q.scales).float()
    b = _scale_tensor(q.biases).float()
    bits, gs = q.bits, q.group_size
    lead = tuple(w.shape[:-1])
    nwords = w.shape[-1]
    n = nwords * 32 // bits
    if bits in (3, 5, 6):  # byte units of lcm(bits, 8) bits: 8 values / 3 bytes, 8 / 5, 4 / 3
        vals, nb = {3: (8, 3), 5: (8, 5), 6: (4, 3)}[bits]
        by = w.contiguous().view(torch.uint8).reshape(*lead, n // vals, nb).to(torch.int64)
        v = by[..., 0]
        for i in range(1, nb):
            v = v | (by[..., i] << (8 * i))
        shifts = torch.arange(0, vals * bits, bits, device=w.device, dtype=torch.int64)
        codes = (v.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    else:
        shifts = torch.arange(0, 32, bits, device=w.device, dtype=torch.int32)
        codes = (w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    out = codes.reshape(*lead, n // gs, gs).to(torch.float32)
    out = out * s.unsqueeze(-1)
    out = out + b.unsqueeze(-1)
    out = out.reshape(*lead, n)
    return out if dtype == torch.float32 else out.to(dtype)


class TorchQLinear:
    """``y = x @ W.T`` for a quantized ``W`` ([out, in]) in mlx's affine format.

    Args:
        q: the QuantizedWeight (numpy arrays or torch tensors; torch tensors may live on CUDA).
        dtype: activation/output dtype (torch.float32 or torch.bfloat16).  On CPU the native kernels compute in
            float32 (decode: int16-quantized activations, exact int32 products, float32 group scaling; prefill:
            float32 dequantize + float32 GEMM) and cast the result to ``dtype``; the torch/CUDA path dequantizes to
            ``dtype`` and multiplies in ``dtype``.
        backend: "auto" (native kernel on CPU when it builds), "native" (raise if unavailable) or "torch".
        exact: decode with float32 activations and FMAs instead of per-group int16 activations (about 1.6x slower;
            default from ``FMOE_QMV_EXACT``, off).
    """

    def __init__(self, q: QuantizedWeight, dtype: torch.dtype = torch.float32, backend: str = "auto",
                 exact: bool | None = None) -> None:
        if not isinstance(q, QuantizedWeight):
            raise ValueError(f"expected a QuantizedWeight, got {type(q).__name__}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        if backend not in ("auto", "native", "torch"):
            raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
        if len(q.weight.shape) != 2:
            raise ValueError(f"TorchQLinear needs a 2-D weight [out, in*bits/32], got shape {tuple(q.weight.shape)}")
        self.bits = q.bits
        self.group_size = q.group_size
        self.out_features = q.out_features
        self.in_features = q.in_features
        self.dtype = dtype
        if exact is None:
            exact = _EXACT_DEFAULT
        self.mode = 1 if exact else 0  # native kernel mode: 0 int16 activations, 1 float32, 2 scalar
        self._lib = None
        self._q_torch: QuantizedWeight | None = None
        is_np = isinstance(q.weight, np.ndarray)
        self.device = torch.device("cpu") if is_np else q.weight.device
        if self.device.type == "cpu" and backend != "torch":
            self._lib = native.load()
            if self._lib is None and backend == "native":
                raise RuntimeError(f"native kernel unavailable: {native.load_error()}")
        elif backend == "native":
            raise RuntimeError("the native kernel runs on CPU tensors only")
        if self._lib is not None and is_np:
            # zero-copy: keep the numpy buffers (read-only ones too) and hand their addresses to the kernel
            w = np.ascontiguousarray(q.weight)
            s, b = np.ascontiguousarray(q.scales), np.ascontiguousarray(q.biases)
            if w.dtype not in (np.uint32, np.int32):
                raise ValueError(f"packed weight must be uint32, got {w.dtype}")
            bf16 = s.dtype in (np.uint16, np.int16) and b.dtype in (np.uint16, np.int16)
            if not bf16:
                s, b = _scales_to_f32(s), _scales_to_f32(b)
            self._src = QuantizedWeight(w, s, b, q.bits, q.group_size)
            self._scales_bf16 = int(bf16)
            self._wp, self._sp, self._bp = (a.__array_interface__["data"][0] for a in (w, s, b))
        else:
            w = _weight_tensor(q.weight)
            s = _scale_tensor(q.scales)
            b = _scale_tensor(q.biases)
            if s.dtype != b.dtype or (self._lib is not None and s.dtype == torch.float16):
                s, b = s.float(), b.float()
            if self._lib is not None:
                w, s, b = w.contiguous(), s.contiguous(), b.contiguous()
                self._wp, self._sp, self._bp = w.data_ptr(), s.data_ptr(), b.data_ptr()
            self._q_torch = QuantizedWeight(w, s, b, q.bits, q.group_size)
            self._src = self._q_torch
            self._scales_bf16 = int(s.dtype == torch.bfloat16)
        self._nbytes: int | None = None     # the weight's bytes, counted once (the profile adds them per call)
        self._qmv = None
        if self._lib is not None:
            # everything constant per layer, converted to ctypes once (see _fn and __call__)
            N, K = ctypes.c_int64(self.out_features), ctypes.c_int64(self.in_features)
            self._cargs = (_VP(self._wp), _VP(self._sp), _VP(self._bp), self._scales_bf16, N, K,
                           self.bits, self.group_size)
            self._fn = self._lib.fmoe_qmv

    @property
    def _fn(self):
        """``fmoe_qmv`` of the library this layer calls (with argtypes); setting it (tests: another ISA variant)
        also sets the prototype-free pointer to the same function that the calls use (``_qmv``)."""
        return self.__dict__.get("_fn_declared")

    @_fn.setter
    def _fn(self, fn) -> None:
        self.__dict__["_fn_declared"] = fn
        self._qmv = None if fn is None else _raw_qmv(fn)

    @property
    def q(self) -> QuantizedWeight:
        """The weight as torch tensors (int32 words, bf16/float scales); made lazily from numpy inputs."""
        if self._q_torch is None:
            self._q_torch = to_torch_quantized(self._src)
        return self._q_torch

    @property
    def backend(self) -> str:
        return "native" if self._lib is not None else "torch"

    @property
    def nbytes(self) -> int:
        if self._nbytes is None:
            self._nbytes = self._src.nbytes
        return self._nbytes

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense weight [out, in] (float32 arithmetic, bit-identical to quant.dequantize), as ``dtype``."""
        dtype = dtype or self.dtype
        if self._lib is None:
            return dequantize_torch(self.q, dtype)
        out = torch.empty((self.out_features, self.in_features), dtype=torch.float32)
        rc = self._lib.fmoe_dequant(self._wp, self._sp, self._bp, self._scales_bf16, out.data_ptr(),
                                    self.out_features, self.in_features, self.bits, self.group_size,
                                    native.threads())
        if rc != 0:
            raise RuntimeError(f"fmoe_dequant failed with code {rc}")
        return out if dtype == torch.float32 else out.to(dtype)

    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x last dim must be in_features={self.in_features}, got shape {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The decode path is a few us of Python around a kernel of tens of us (a 2 MB matrix on 16 cores), so it
        # keeps to the cheapest calls: constants converted once (_cargs), no argtypes conversion (_qmv), the output
        # made by new_empty with int arguments (a shape tuple or a dtype keyword costs ~1 us more each).
        K = self.in_features
        shape = x.shape if isinstance(x, torch.Tensor) else ()
        nd = len(shape)
        if not nd or shape[-1] != K:
            self._check_x(x)
        m = shape[0] if nd == 2 else x.numel() // K
        if self._lib is not None and m <= NATIVE_MAX_ROWS and x.is_cpu:
            if x.dtype is not _F32 or not x.is_contiguous():
                x = x.float().contiguous()
            if nd == 2:
                y = x.new_empty(shape[0], self.out_features)    # x is float32 on the CPU: so is y
            elif nd == 1:
                y = x.new_empty(self.out_features)
            else:
                y = x.new_empty(*shape[:-1], self.out_features)
            if m:
                if PROFILE is None:
                    self._run(x, y, m, self.mode)
                else:
                    t0 = time.perf_counter()
                    self._run(x, y, m, self.mode)
                    PROFILE["kernel_s"] += time.perf_counter() - t0
                    PROFILE["calls"] += 1
                    PROFILE["bytes"] += self.nbytes
            dtype = self.dtype
            if dtype is _F32:
                return y
            cast = _CAST.get(dtype)
            return cast(y) if cast is not None else y.to(dtype)
        lead = x.shape[:-1]
        if self._lib is not None and x.device.type == "cpu":
            # prefill on CPU: native dequantize to float32, one float32 GEMM, cast
            y = x.reshape(-1, self.in_features).to(torch.float32) @ self.dequantize(torch.float32).t()
            y = y.reshape(*lead, self.out_features)
            return y if self.dtype == torch.float32 else y.to(self.dtype)
        if x.device.type == "cuda" and m <= GPU_QMV_MAX_ROWS:
            if gpu.kernels("cuda_qmv") is not None or gpu.kernels("triton_qmv") is not None:
                # decode on the GPU: the grouped mat-vec (CUDA C++ or Triton) reads the packed weight, no dense copy
                from .grouped_qmv import grouped_qmv

                q = self.q
                y = grouped_qmv(x.reshape(m, self.in_features), q.weight[None], q.scales[None], q.biases[None],
                                _zero_slots(m, x.device), self.bits, self.group_size)
                return y.reshape(*lead, self.out_features).to(self.dtype)
        wd = dequantize_torch(self.q, self.dtype)
        return x.to(device=wd.device, dtype=self.dtype) @ wd.t()

    def _run(self, x32: torch.Tensor, y: torch.Tensor, m: int, mode: int) -> None:
        """fmoe_qmv on a contiguous float32 x32 [m, in] into a contiguous float32 y [m, out]."""
        w, s, b, bf16, n64, k64, bits, gs = self._cargs
        rc = self._qmv(w, s, b, bf16, _VP(x32.data_ptr()), _VP(y.data_ptr()), n64, k64, m, k64, n64, bits, gs,
                       native.threads(), mode)
        if rc != 0:
            raise RuntimeError(f"fmoe_qmv failed with code {rc}")

    def _native(self, x2: torch.Tensor, mode: int | None = None) -> torch.Tensor:
        """Native kernel on a 2-D input [m, in] (any m); mode None = this layer's mode, 0/1/2 see qmv.cpp."""
        if self._lib is None:
            raise RuntimeError(f"native kernel unavailable: {native.load_error()}")
        x32 = x2.reshape(-1, self.in_features).to(torch.float32).contiguous()
        y = torch.empty((x32.shape[0], self.out_features), dtype=torch.float32)
        if x32.shape[0]:
            self._run(x32, y, x32.shape[0], self.mode if mode is None else mode)
        return y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Pure torch: dequantize in float32, float32 matmul, result cast to ``dtype``."""
        self._check_x(x)
        wd = dequantize_torch(self.q, torch.float32)
        y = x.to(device=wd.device, dtype=torch.float32) @ wd.t()
        return y.to(self.dtype)

    def __repr__(self) -> str:
        return (
            f"TorchQLinear(out={self.out_features}, in={self.in_features}, bits={self.bits}, "
            f"group_size={self.group_size}, dtype={self.dtype}, backend={self.backend}, device={self.device})"
        )


def _fused_triple(ew) -> tuple | None:
    """One expert's (gate, up, down) for FusedExperts: (key = (bits, group, bf16 scales, mode), hidden, intermediate,
    the 9 buffer pointers), or None when the three cannot go into one native call. Worked out once per expert and kept
    on its gate layer (checked against the same up / down layers and settings): a decode token asks for it for every
    layer's experts (making it afresh took 32 us a layer of 10 experts on the 2-core machine)."""
    g, u, d = ew
    if not all(isinstance(m, TorchQLinear) and m._lib is not None for m in ew):
        return None
    modes = (g.mode, u.mode, d.mode)
    kept = g.__dict__.get("_fused_triple")
    if kept is not None and kept[0] is u and kept[1] is d and kept[2] == modes:
        return kept[3]
    key = (g.bits, g.group_size, g._scales_bf16, g.mode)
    entry = None
    if (all((m.bits, m.group_size, m._scales_bf16, m.mode) == key for m in (u, d))
            and g.in_features == u.in_features == d.out_features and g.out_features == u.out_features == d.in_features):
        entry = (key, g.in_features, g.out_features,
                 np.array([p for m in ew for p in (m._wp, m._sp, m._bp)], dtype=np.uint64))
    g.__dict__["_fused_triple"] = (u, d, modes, entry)
    return entry


class FusedExperts:
    """A token's experts in one native call (decode): ``y = sum_e w_e * down_e(silu(gate_e x) * up_e x)``.

    ``FusedExperts.make(experts)`` takes a list of (gate, up, down) ``TorchQLinear`` and returns None unless all of
    them run the native kernel on CPU with the same bits, group size, scales dtype and mode, and agree on the
    hidden size; otherwise callers keep the per-matrix path.  ``__call__(x[H] or [1, H], weights) -> [1, H]``
    float32 (``out`` given: added to it in place).  One parallel region over the rows of all matrices (see
    ``fmoe_moe_fused`` in qmv.cpp).
    """

    __slots__ = ("_fn", "_ptrs", "_inter", "n", "hidden", "bits", "group_size", "_bf16", "_mode", "_nbytes", "_keep")

    @classmethod
    def make(cls, experts) -> FusedExperts | None:
        entries = []
        for ew in experts:
            e = _fused_triple(ew)
            if e is None:
                return None
            entries.append(e)
        if not entries or any(e[:2] != entries[0][:2] for e in entries):   # one (bits, group, ...) and hidden size
            return None
        return cls(experts, entries)

    def __init__(self, experts, entries) -> None:
        """``entries``: per expert ``_fused_triple``'s (key, hidden, inter, its 9 pointers), all of one key."""
        self._fn = experts[0][0]._lib.fmoe_moe_fused
        self.n = len(experts)
        self.hidden = entries[0][1]
        self.bits, self.group_size, self._bf16, self._mode = entries[0][0]
        self._ptrs = np.concatenate([e[3] for e in entries])      # 9 pointers an expert (uint64 = void*)
        self._inter = np.array([e[2] for e in entries], dtype=np.int64)
        self._nbytes: int | None = None
        self._keep = experts  # the buffers must outlive the pointers

    @property
    def nbytes(self) -> int:
        """The experts' weight bytes (counted when asked: only the profile reads them)."""
        if self._nbytes is None:
            self._nbytes = sum(m.nbytes for ew in self._keep for m in ew)
        return self._nbytes

    def __call__(self, x: torch.Tensor, weights, out: torch.Tensor | None = None) -> torch.Tensor:
        import ctypes

        x32 = x.reshape(-1)
        if x32.dtype != torch.float32 or not x32.is_contiguous():
            x32 = x32.to(torch.float32).contiguous()
        if x32.numel() != self.hidden:
            raise ValueError(f"FusedExperts takes one token of {self.hidden}, got shape {tuple(x.shape)}")
        w = (ctypes.c_float * self.n)(*[float(v) for v in weights])
        acc = 0
        if out is not None and out.dtype == torch.float32 and out.is_contiguous() and out.numel() == self.hidden:
            y, acc = out, 1
        else:
            y = torch.empty((1, self.hidden), dtype=torch.float32)
        t0 = time.perf_counter() if PROFILE is not None else 0.0
        rc = self._fn(self._ptrs.ctypes.data, self._inter.ctypes.data, w, self.n, self.hidden, self._bf16, self.bits,
                      self.group_size, x32.data_ptr(), y.data_ptr(), acc, native.threads(), self._mode)
        if PROFILE is not None:
            PROFILE["kernel_s"] += time.perf_counter() - t0
            PROFILE["calls"] += 1
            PROFILE["bytes"] += self.nbytes
        if rc != 0:
            raise RuntimeError(f"fmoe_moe_fused failed with code {rc}")
        if out is not None and not acc:
            return out.add_(y.reshape(out.shape).to(out.dtype))
        return y
