"""TorchQLinear's cheap decode call (issue 14): constants converted to ctypes once per layer, the kernel called
through a pointer without argtypes, ``native.threads()`` memoized on the raw environment entry.  Behaviour only,
no timings: results equal to the reference and to the declared (argtypes) call, fresh outputs on every call, the
per-call settings (``mode``, ``dtype``, ``$FMOE_THREADS``, the profile) still read on every call."""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from fmoe.errors import ConfigError
from fmoe.kernels import native
from fmoe.kernels import torch_qlinear as tq
from fmoe.kernels.quant import dequantize, quantize
from fmoe.kernels.torch_qlinear import NATIVE_MAX_ROWS, TorchQLinear, to_torch_quantized

pytestmark = pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")


def _q(rng, bits=4, group_size=64, out=48, inp=256, scale_dtype="bfloat16"):
    w = (rng.standard_normal((out, inp)) * 0.05).astype(np.float32)
    return quantize(w, bits, group_size, scale_dtype=scale_dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))


def _declared_call(layer: TorchQLinear, x: torch.Tensor, mode: int | None = None) -> torch.Tensor:
    """The kernel called the way it was before: the argtypes-declared function with Python ints."""
    x32 = x.reshape(-1, layer.in_features).to(torch.float32).contiguous()
    y = torch.full((x32.shape[0], layer.out_features), float("nan"))
    rc = layer._fn(layer._wp, layer._sp, layer._bp, layer._scales_bf16, x32.data_ptr(), y.data_ptr(),
                   layer.out_features, layer.in_features, x32.shape[0], layer.in_features, layer.out_features,
                   layer.bits, layer.group_size, native.threads(), layer.mode if mode is None else mode)
    assert rc == 0
    return y.reshape(*x.shape[:-1], layer.out_features)


@pytest.mark.parametrize("bits", (2, 3, 4, 5, 6, 8))
@pytest.mark.parametrize("group_size", (32, 64, 128))
def test_repeated_calls_match_reference_and_declared_call(bits, group_size):
    """Many calls on one layer with different inputs: each equals the argtypes call bit for bit and the reference
    dequantize + matmul within the kernel's tolerance (the cached arguments never go stale)."""
    rng = np.random.default_rng(bits * 100 + group_size)
    q = _q(rng, bits, group_size)
    layer = TorchQLinear(q, backend="native")
    wd = torch.from_numpy(dequantize(q))
    for i in range(12):
        x = torch.randn((1, 3, 2, 1)[i % 4], 256)
        y = layer(x)
        assert y.dtype == torch.float32 and y.shape == (x.shape[0], 48)
        assert torch.equal(y, _declared_call(layer, x))
        assert _rel(y, x @ wd.t()) <= 1e-3
        assert _rel(y, layer.reference(x)) <= 1e-3


@pytest.mark.parametrize("scale_dtype", ("bfloat16", "float32"))
@pytest.mark.parametrize("source", ("numpy", "torch"))
def test_weight_sources(scale_dtype, source):
    """numpy (zero-copy) and torch weights, bf16 and float32 scales: the cached pointers are the layer's buffers."""
    rng = np.random.default_rng(5)
    q = _q(rng, 4, 64, scale_dtype=scale_dtype)
    qq = q if source == "numpy" else to_torch_quantized(q)
    layer = TorchQLinear(qq, backend="native")
    w, s, b = layer._cargs[:3]
    assert (w.value, s.value, b.value) == (layer._wp, layer._sp, layer._bp)
    assert layer._cargs[3] == layer._scales_bf16 == int(scale_dtype == "bfloat16")
    x = torch.randn(2, 256)
    assert torch.equal(layer(x), _declared_call(layer, x))
    assert _rel(layer(x), x @ torch.from_numpy(dequantize(q)).t()) <= 1e-3


def test_outputs_are_fresh_tensors():
    """Every call returns a new tensor: a result kept by the caller is never overwritten by a later call."""
    rng = np.random.default_rng(1)
    for dtype in (torch.float32, torch.bfloat16):
        layer = TorchQLinear(_q(rng), dtype, backend="native")
        xs = [torch.randn(1, 256) for _ in range(6)]
        ys = [layer(x) for x in xs]
        kept = [y.clone() for y in ys]
        for _ in range(3):
            for x in xs[::-1]:
                layer(x)
        ptrs = {y.untyped_storage().data_ptr() for y in ys}
        assert len(ptrs) == len(ys)
        for x, y, k in zip(xs, ys, kept):
            assert torch.equal(y, k)
            assert torch.equal(y, layer(x))
            assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        # writing into a result changes neither the next result nor the input
        x0 = xs[0].clone()
        ys[0].fill_(7.0)
        assert torch.equal(xs[0], x0) and torch.equal(layer(xs[0]), kept[0])


@pytest.mark.parametrize("layer_dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("x_dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_dtypes_and_shapes(layer_dtype, x_dtype):
    """bf16/float16/float32 inputs and layers, 1-D, 1-row, multi-row, extra leading dims, no rows, non-contiguous
    inputs: the result is the float32 kernel output cast to the layer's dtype, shaped [..., out]."""
    rng = np.random.default_rng(2)
    layer = TorchQLinear(_q(rng), layer_dtype, backend="native")
    base = torch.randn(6, 256)
    cases = [base[0], base[:1], base[:4], base[:6].reshape(2, 3, 256), base[:2].reshape(2, 1, 256), base[:0],
             torch.randn(256, 5).t(), base[::2], base[:NATIVE_MAX_ROWS]]
    for x in cases:
        x = x.to(x_dtype)
        y = layer(x)
        assert y.dtype == layer_dtype and y.shape == (*x.shape[:-1], 48) and y.is_contiguous()
        assert torch.equal(y, _declared_call(layer, x).to(layer_dtype)) if x.numel() else y.numel() == 0
        assert torch.equal(y, layer._native(x.reshape(-1, 256)).reshape(y.shape).to(layer_dtype))


def test_mode_dtype_and_threads_read_per_call(monkeypatch):
    """``mode``, ``$FMOE_THREADS`` and ``PROFILE`` changed after construction apply to the next call."""
    rng = np.random.default_rng(3)
    layer = TorchQLinear(_q(rng, 4, 64), backend="native")
    x = torch.randn(1, 256)
    ref = x @ torch.from_numpy(dequantize(layer._src)).t()
    for mode in (0, 1, 2, 0):
        layer.mode = mode
        y = layer(x)
        assert torch.equal(y, layer._native(x, mode=mode)) and torch.equal(y, _declared_call(layer, x, mode))
        assert _rel(y, ref) <= (1e-3 if mode == 0 else 1e-5)
    for t in ("1", "2", "3", "1"):
        monkeypatch.setenv("FMOE_THREADS", t)
        assert native.threads() == int(t)
        assert torch.equal(layer(x), _declared_call(layer, x))
    monkeypatch.setenv("FMOE_THREADS", "lots")
    for _ in range(2):  # a bad value raises on every call, not only the first
        with pytest.raises(ConfigError):
            layer(x)
    monkeypatch.delenv("FMOE_THREADS")
    assert native.threads() == native.physical_cores()
    prev = tq.profile(True)
    try:
        layer(x)
        layer(torch.randn(3, 256))
        layer(torch.randn(0, 256))   # no rows: no kernel call
        counters = tq.profile(False)
    finally:
        tq.PROFILE = prev
    assert counters["calls"] == 2 and counters["bytes"] == 2 * layer.nbytes and counters["kernel_s"] > 0


def test_threads_memo_follows_environment(monkeypatch):
    monkeypatch.setenv("FMOE_THREADS", "7")
    assert native.threads() == 7
    os.environ["FMOE_THREADS"] = " 5 "
    assert native.threads() == 5
    monkeypatch.setenv("FMOE_THREADS", "")
    assert native.threads() == native.physical_cores()
    monkeypatch.setenv("FMOE_THREADS", "0")
    assert native.threads() == 1
    monkeypatch.setenv("FMOE_THREADS", "7")
    assert native.threads() == 7


def test_swapping_the_function_swaps_the_call():
    """Setting ``_fn`` (tests pick an ISA variant that way) also points the argument-free call at that function."""
    rng = np.random.default_rng(4)
    layer = TorchQLinear(_q(rng), backend="native")
    x = torch.randn(2, 256)
    y = layer(x)
    for isa in native.supported_isas():
        lib = native.load(isa)
        if lib is None:
            continue
        layer._lib, layer._fn = lib, lib.fmoe_qmv
        assert ctypes.cast(layer._qmv, ctypes.c_void_p).value == ctypes.cast(lib.fmoe_qmv, ctypes.c_void_p).value
        assert layer._fn is lib.fmoe_qmv
        assert torch.equal(layer(x), _declared_call(layer, x))
        assert _rel(layer(x), y) <= 1e-3


def test_bad_inputs_still_raise():
    layer = TorchQLinear(_q(np.random.default_rng(6)), backend="native")
    for bad in (np.zeros(256, np.float32), torch.tensor(1.0), torch.randn(1, 255), torch.randn(256, 1)):
        with pytest.raises(ValueError):
            layer(bad)


def test_same_layer_from_many_threads():
    """Concurrent calls on one layer with different inputs: each result is that input's own (nothing shared per
    call between threads)."""
    rng = np.random.default_rng(8)
    layer = TorchQLinear(_q(rng, 4, 64, out=96, inp=512), backend="native")
    xs = [torch.randn((1, 2, 1, 3)[i % 4], 512) for i in range(16)]
    refs = [layer(x) for x in xs]

    def work(i):
        return all(torch.equal(layer(xs[(i + j) % 16]), refs[(i + j) % 16]) for j in range(40))

    with ThreadPoolExecutor(max_workers=4) as ex:
        assert all(ex.map(work, range(16)))


def test_torch_backend_layer_unchanged():
    """The torch path (backend="torch") has no native state and still works."""
    rng = np.random.default_rng(9)
    q = _q(rng)
    layer = TorchQLinear(q, backend="torch")
    assert layer._lib is None and layer._fn is None and layer._qmv is None
    x = torch.randn(1, 256)
    assert _rel(layer(x), x @ torch.from_numpy(dequantize(q)).t()) <= 1e-5
