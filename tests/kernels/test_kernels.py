"""fmoe.kernels: mlx-identical quantize/dequantize and the quantized linear (native + torch paths), against mlx (skipped
without it); the native kernel's ISA variants and fused experts, which need no mlx, are in test_isa_variants.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmoe.kernels import native
from fmoe.kernels.quant import (
    QuantizedWeight,
    bf16_to_f32,
    dequantize,
    f32_to_bf16,
    pack,
    quantize,
    unpack,
)
from fmoe.kernels.torch_qlinear import NATIVE_MAX_ROWS, TorchQLinear, dequantize_torch, to_torch_quantized
from quant_cases import edge_weights, experts, rel_err

mx = pytest.importorskip("mlx.core")

BITS = (2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)




def _mx_bf16(a):
    return np.array(a.astype(mx.bfloat16).view(mx.uint16))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_quantize_bit_identical_to_mlx(bits, group_size):
    rng = np.random.default_rng(bits * 1000 + group_size)
    w = edge_weights(rng, group_size=group_size)
    wq, s, b = mx.quantize(mx.array(w), group_size, bits)
    q = quantize(w, bits, group_size)
    assert q.weight.dtype == np.uint32 and q.scales.dtype == np.uint16 and q.biases.dtype == np.uint16
    np.testing.assert_array_equal(q.weight, np.array(wq))
    np.testing.assert_array_equal(q.scales, _mx_bf16(s))  # mlx's float32 scales rounded to bf16
    np.testing.assert_array_equal(q.biases, _mx_bf16(b))
    q32 = quantize(w, bits, group_size, scale_dtype="float32")
    np.testing.assert_array_equal(q32.weight, np.array(wq))
    np.testing.assert_array_equal(q32.scales, np.array(s))
    np.testing.assert_array_equal(q32.biases, np.array(b))
    # a bf16 input (as in mlx-community conversions) matches mx.quantize on the bf16 array exactly
    wb = mx.array(w).astype(mx.bfloat16)
    wqb, sb, bb = mx.quantize(wb, group_size, bits)
    qb = quantize(np.array(wb.view(mx.uint16)), bits, group_size)
    np.testing.assert_array_equal(qb.weight, np.array(wqb))
    np.testing.assert_array_equal(qb.scales, np.array(sb.view(mx.uint16)))
    np.testing.assert_array_equal(qb.biases, np.array(bb.view(mx.uint16)))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_dequantize_bit_identical_to_mlx(bits, group_size):
    rng = np.random.default_rng(7 + bits + group_size)
    w = edge_weights(rng, group_size=group_size)
    q = quantize(w, bits, group_size)
    wq = mx.array(q.weight)
    s32, b32 = mx.array(bf16_to_f32(q.scales)), mx.array(bf16_to_f32(q.biases))
    ref32 = np.array(mx.dequantize(wq, s32, b32, group_size, bits))
    d = dequantize(q)
    assert d.dtype == np.float32 and d.shape == w.shape
    np.testing.assert_array_equal(d, ref32)
    sbf, bbf = mx.array(q.scales).view(mx.bfloat16), mx.array(q.biases).view(mx.bfloat16)
    refbf = np.array(mx.dequantize(wq, sbf, bbf, group_size, bits).astype(mx.float32))
    np.testing.assert_array_equal(dequantize(q, compute="bfloat16"), refbf)
    # torch dequantize agrees bit for bit with numpy
    np.testing.assert_array_equal(dequantize_torch(q).numpy(), d)
    # and the error is within about one quantization step (mlx snaps the bias to the larger edge: some clipping)
    step = np.repeat(np.abs(bf16_to_f32(q.scales)), group_size, axis=1)
    assert np.all(np.abs(d - w) <= step * 1.5 + 1e-2 * np.abs(w) + 1e-6)


@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack_roundtrip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(5, 128), dtype=np.uint32)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint32 and packed.shape == (5, 128 * bits // 32)
    np.testing.assert_array_equal(unpack(packed, bits), codes)


def test_bf16_helpers():
    x = np.array([0.0, -0.0, 1.0, 3.14159, -2.5e-8, 65504.0, np.inf, -np.inf, 1.00390625, 1.01171875], np.float32)
    b = f32_to_bf16(x)
    np.testing.assert_array_equal(b, _mx_bf16(mx.array(x)))
    np.testing.assert_array_equal(bf16_to_f32(b), np.array(mx.array(x).astype(mx.bfloat16).astype(mx.float32)))
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.array([np.nan], np.float32))))[0]


def _f32(a):
    return a if a.dtype == np.float32 else bf16_to_f32(a)


def _mx_matmul(x, q):
    return np.array(
        mx.quantized_matmul(mx.array(x), mx.array(q.weight), mx.array(_f32(q.scales)), mx.array(_f32(q.biases)),
                            transpose=True, group_size=q.group_size, bits=q.bits)
    )




CASES = [(b, g) for b in BITS for g in GROUPS]


@pytest.mark.parametrize("bits,group_size", CASES)
def test_qlinear_matches_mlx(bits, group_size):
    rng = np.random.default_rng(100 + bits * 7 + group_size)
    inp = 544 if group_size == 32 else 512  # 544: not a multiple of the kernel's block for some widths (tail path)
    w = edge_weights(rng, out=40, inp=inp, group_size=group_size)
    q = quantize(w, bits, group_size)
    layer = TorchQLinear(q)
    for t in (1, 3, NATIVE_MAX_ROWS + 5):
        x = rng.standard_normal((t, inp)).astype(np.float32)
        ref = _mx_matmul(x, q)
        xt = torch.from_numpy(x)
        y = layer(xt)
        assert y.dtype == torch.float32 and y.shape == (t, 40)
        assert rel_err(y.numpy(), ref) <= 1e-3
        assert rel_err(layer.reference(xt).numpy(), ref) <= 1e-3
        yb = TorchQLinear(q, torch.bfloat16)(xt.to(torch.bfloat16))
        assert yb.dtype == torch.bfloat16
        assert rel_err(yb.float().numpy(), ref) <= 2e-2
    # batch-1 with leading dims, and a 1-D input
    x = rng.standard_normal((1, 1, inp)).astype(np.float32)
    assert layer(torch.from_numpy(x)).shape == (1, 1, 40)
    assert layer(torch.from_numpy(x[0, 0])).shape == (40,)


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("bits", BITS)
def test_native_simd_and_scalar_paths(bits):
    rng = np.random.default_rng(bits)
    for group_size, inp in ((32, 800), (64, 1024), (128, 384)):
        w = edge_weights(rng, out=33, inp=inp, group_size=group_size)
        q = quantize(w, bits, group_size)
        layer = TorchQLinear(q, backend="native")
        assert layer.backend == "native"
        x = torch.randn(2, inp)
        ref = _mx_matmul(x.numpy(), q)
        np.testing.assert_array_equal(layer.dequantize(torch.float32).numpy(), dequantize(q))
        # int16 activations (error ~2^-16 of the group max |x|), float32 SIMD, scalar
        for mode, tol in ((0, 1e-3), (1, 1e-5), (2, 1e-5)):
            assert rel_err(layer._native(x, mode=mode).numpy(), ref) <= tol, mode
    # non-finite activations: the int16 path hands over to the float path (inf/nan propagate)
    x = torch.randn(1, inp)
    x[0, 3] = float("inf")
    assert not torch.isfinite(layer._native(x, mode=0)).all()


def test_qlinear_torch_tensors_and_readonly_numpy():
    rng = np.random.default_rng(3)
    w = edge_weights(rng, out=16, inp=256, group_size=64)
    q = quantize(w, 4, 64)
    x = torch.randn(1, 256)
    ref = _mx_matmul(x.numpy(), q)
    qt = to_torch_quantized(q)
    assert qt.weight.dtype == torch.int32 and qt.scales.dtype == torch.bfloat16
    assert qt.nbytes == q.nbytes and qt.out_features == 16 and qt.in_features == 256
    for backend in ("auto", "torch"):
        assert rel_err(TorchQLinear(qt, backend=backend)(x).numpy(), ref) <= 1e-3
    np.testing.assert_array_equal(dequantize(qt), dequantize(q))
    # read-only buffers, as produced by np.frombuffer on bytes read from disk
    ro = QuantizedWeight(
        np.frombuffer(q.weight.tobytes(), np.uint32).reshape(q.weight.shape),
        np.frombuffer(q.scales.tobytes(), np.uint16).reshape(q.scales.shape),
        np.frombuffer(q.biases.tobytes(), np.uint16).reshape(q.biases.shape),
        4, 64,
    )
    assert rel_err(TorchQLinear(ro)(x).numpy(), ref) <= 1e-3
    assert rel_err(TorchQLinear(ro, backend="torch")(x).numpy(), ref) <= 1e-3
    # float32 scales are accepted as well
    q32 = quantize(w, 4, 64, scale_dtype="float32")
    assert rel_err(TorchQLinear(q32)(x).numpy(), _mx_matmul(x.numpy(), q32)) <= 1e-3


def test_quantized_weight_properties():
    q = quantize(np.zeros((8, 128), np.float32), 3, 32)
    assert (q.out_features, q.in_features) == (8, 128)
    assert q.weight.shape == (8, 12)
    assert q.nbytes == 8 * 12 * 4 + 2 * 8 * 4 * 2


def test_bad_inputs():
    w = np.zeros((4, 64), np.float32)
    with pytest.raises(ValueError):
        quantize(w, 7, 32)
    with pytest.raises(ValueError):
        quantize(w, 4, 16)
    with pytest.raises(ValueError):
        quantize(np.zeros((4, 48), np.float32), 4, 32)  # in not divisible by group size
    with pytest.raises(ValueError):
        quantize(np.zeros(64, np.float32), 4, 32)  # 1-D
    with pytest.raises(ValueError):
        quantize(np.zeros((4, 64), np.int32), 4, 32)
    with pytest.raises(ValueError):
        quantize(w, 4, 32, scale_dtype="float16")
    q = quantize(w, 4, 32)
    with pytest.raises(ValueError):
        QuantizedWeight(q.weight, q.scales[:, :1], q.biases[:, :1], 4, 32)  # scales do not match weight
    with pytest.raises(ValueError):
        QuantizedWeight(q.weight, q.scales, q.biases[:2], 4, 32)
    with pytest.raises(ValueError):
        QuantizedWeight(q.weight, q.scales, q.biases, 8, 32)  # wrong bits for this packing
    with pytest.raises(ValueError):
        dequantize("not a weight")
    with pytest.raises(ValueError):
        dequantize(q, compute="float16")
    layer = TorchQLinear(q)
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 65))
    with pytest.raises(ValueError):
        TorchQLinear(q, dtype=torch.int32)
    with pytest.raises(ValueError):
        TorchQLinear(q, backend="cuda-magic")
    with pytest.raises(ValueError):
        TorchQLinear(QuantizedWeight(q.weight[None], q.scales[None], q.biases[None], 4, 32))


def test_qlinear_concurrent_calls():
    """Several Python threads calling the native kernel at once (the pool serializes or runs callers alone)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    layers, xs, refs = [], [], []
    for bits in BITS:
        w = edge_weights(rng, out=96, inp=512, group_size=64)
        q = quantize(w, bits, 64)
        layer = TorchQLinear(q)
        x = torch.from_numpy(rng.standard_normal((1, 512)).astype(np.float32))
        layers.append(layer)
        xs.append(x)
        refs.append(layer(x))                      # the same kernel called alone: concurrent calls must equal it

    def work(i):
        j = i % len(BITS)
        return all(torch.equal(layers[j](xs[j]), refs[j]) for _ in range(20))

    with ThreadPoolExecutor(max_workers=4) as ex:
        assert all(ex.map(work, range(16)))


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("bits", BITS)
def test_native_multirow_equals_rowwise(bits):
    """Prefill rows go four at a time through the kernel: same bits as one row at a time."""
    rng = np.random.default_rng(20 + bits)
    for group_size in GROUPS:
        q = quantize(edge_weights(rng, out=20, inp=512, group_size=group_size), bits, group_size)
        layer = TorchQLinear(q)
        x = torch.randn(9, 512)
        rows = torch.cat([layer._native(x[i : i + 1], mode=0) for i in range(9)])
        assert torch.equal(layer._native(x, mode=0), rows)


def test_mlx_switch_glu_matches_per_expert():
    """MLX backend: gather_qmm over stacked experts (decode and sorted prefill) = the per-expert quantized_matmul."""
    from fmoe.engine.backends.mlx import MLXBackend, MLXQLinear

    rng = np.random.default_rng(9)
    ops = MLXBackend("float32")
    H, I, E, k = 256, 128, 6, 4
    qs = experts(rng, 4, 64, H, (I,) * E)
    stacked = tuple(QuantizedWeight(*(np.stack([getattr(qs[e][m], a) for e in range(E)])
                                      for a in ("weight", "scales", "biases")), 4, 64) for m in range(3))
    sw = ops.prepare_switch(stacked)
    assert sw is not None
    for T in (1, 20):  # 20 x 4 >= 64: sorted indices
        x = rng.standard_normal((T, H)).astype(np.float32)
        ids = np.stack([rng.permutation(E)[:k] for _ in range(T)])
        w = rng.random((T, k)).astype(np.float32)
        y = np.array(ops.switch_glu(mx.array(x), sw, ids, w))
        ref = np.zeros((T, H), np.float32)
        for t in range(T):
            for j in range(k):
                g, u, d = (MLXQLinear(q, mx.float32) for q in qs[ids[t, j]])
                xt = mx.array(x[t:t + 1])
                ref[t] += w[t, j] * np.array(d(ops.silu(g(xt)) * u(xt)))[0]
        assert rel_err(y, ref) <= 1e-5, T
