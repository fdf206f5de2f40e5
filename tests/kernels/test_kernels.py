"""fmoe.kernels: mlx-identical quantize/dequantize and the quantized linear (native + torch paths)."""

from __future__ import annotations

import os

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

mx = pytest.importorskip("mlx.core")

BITS = (2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)


def _weights(rng, out=24, inp=256, group_size=32):
    w = (rng.standard_normal((out, inp)) * 0.05).astype(np.float32)
    # edge cases: an all-zero group, a constant group, all-positive / all-negative groups, an outlier
    w[0, :group_size] = 0.0
    w[1, :group_size] = 0.75
    w[2, :group_size] = np.abs(w[2, :group_size])
    w[3, :group_size] = -np.abs(w[3, :group_size])
    w[4, 5] = 3.0
    return w


def _mx_bf16(a):
    return np.array(a.astype(mx.bfloat16).view(mx.uint16))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_quantize_bit_identical_to_mlx(bits, group_size):
    rng = np.random.default_rng(bits * 1000 + group_size)
    w = _weights(rng, group_size=group_size)
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
    w = _weights(rng, group_size=group_size)
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


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


CASES = [(b, g) for b in BITS for g in GROUPS]


@pytest.mark.parametrize("bits,group_size", CASES)
def test_qlinear_matches_mlx(bits, group_size):
    rng = np.random.default_rng(100 + bits * 7 + group_size)
    inp = 544 if group_size == 32 else 512  # 544: not a multiple of the kernel's block for some widths (tail path)
    w = _weights(rng, out=40, inp=inp, group_size=group_size)
    q = quantize(w, bits, group_size)
    layer = TorchQLinear(q)
    for t in (1, 3, NATIVE_MAX_ROWS + 5):
        x = rng.standard_normal((t, inp)).astype(np.float32)
        ref = _mx_matmul(x, q)
        xt = torch.from_numpy(x)
        y = layer(xt)
        assert y.dtype == torch.float32 and y.shape == (t, 40)
        assert _rel(y.numpy(), ref) <= 1e-3
        assert _rel(layer.reference(xt).numpy(), ref) <= 1e-3
        yb = TorchQLinear(q, torch.bfloat16)(xt.to(torch.bfloat16))
        assert yb.dtype == torch.bfloat16
        assert _rel(yb.float().numpy(), ref) <= 2e-2
    # batch-1 with leading dims, and a 1-D input
    x = rng.standard_normal((1, 1, inp)).astype(np.float32)
    assert layer(torch.from_numpy(x)).shape == (1, 1, 40)
    assert layer(torch.from_numpy(x[0, 0])).shape == (40,)


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("bits", BITS)
def test_native_simd_and_scalar_paths(bits):
    rng = np.random.default_rng(bits)
    for group_size, inp in ((32, 800), (64, 1024), (128, 384)):
        w = _weights(rng, out=33, inp=inp, group_size=group_size)
        q = quantize(w, bits, group_size)
        layer = TorchQLinear(q, backend="native")
        assert layer.backend == "native"
        x = torch.randn(2, inp)
        ref = _mx_matmul(x.numpy(), q)
        np.testing.assert_array_equal(layer.dequantize(torch.float32).numpy(), dequantize(q))
        # int16 activations (error ~2^-16 of the group max |x|), float32 SIMD, scalar
        for mode, tol in ((0, 1e-3), (1, 1e-5), (2, 1e-5)):
            assert _rel(layer._native(x, mode=mode).numpy(), ref) <= tol, mode
    # non-finite activations: the int16 path hands over to the float path (inf/nan propagate)
    x = torch.randn(1, inp)
    x[0, 3] = float("inf")
    assert not torch.isfinite(layer._native(x, mode=0)).all()


def test_qlinear_torch_tensors_and_readonly_numpy():
    rng = np.random.default_rng(3)
    w = _weights(rng, out=16, inp=256, group_size=64)
    q = quantize(w, 4, 64)
    x = torch.randn(1, 256)
    ref = _mx_matmul(x.numpy(), q)
    qt = to_torch_quantized(q)
    assert qt.weight.dtype == torch.int32 and qt.scales.dtype == torch.bfloat16
    assert qt.nbytes == q.nbytes and qt.out_features == 16 and qt.in_features == 256
    for backend in ("auto", "torch"):
        assert _rel(TorchQLinear(qt, backend=backend)(x).numpy(), ref) <= 1e-3
    np.testing.assert_array_equal(dequantize(qt), dequantize(q))
    # read-only buffers, as produced by np.frombuffer on bytes read from disk
    ro = QuantizedWeight(
        np.frombuffer(q.weight.tobytes(), np.uint32).reshape(q.weight.shape),
        np.frombuffer(q.scales.tobytes(), np.uint16).reshape(q.scales.shape),
        np.frombuffer(q.biases.tobytes(), np.uint16).reshape(q.biases.shape),
        4, 64,
    )
    assert _rel(TorchQLinear(ro)(x).numpy(), ref) <= 1e-3
    assert _rel(TorchQLinear(ro, backend="torch")(x).numpy(), ref) <= 1e-3
    # float32 scales are accepted as well
    q32 = quantize(w, 4, 64, scale_dtype="float32")
    assert _rel(TorchQLinear(q32)(x).numpy(), _mx_matmul(x.numpy(), q32)) <= 1e-3


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
        w = _weights(rng, out=96, inp=512, group_size=64)
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
        q = quantize(_weights(rng, out=20, inp=512, group_size=group_size), bits, group_size)
        layer = TorchQLinear(q)
        x = torch.randn(9, 512)
        rows = torch.cat([layer._native(x[i : i + 1], mode=0) for i in range(9)])
        assert torch.equal(layer._native(x, mode=0), rows)


# ------------------------------------------------------------------------------------- ISA variants, fused experts

ISAS = native.supported_isas()


def _variant_layer(q, isa):
    """A TorchQLinear whose native calls go to the ``isa`` build of qmv.cpp."""
    lib = native.load(isa)
    if lib is None:
        pytest.skip(f"{isa} kernel unavailable: {native.load_error(isa)}")
    layer = TorchQLinear(q, backend="native")
    layer._lib, layer._fn = lib, lib.fmoe_qmv
    return layer


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", ("1", "2"))
def test_long_2bit_rows_in_quads_equal_single_rows(isa, threads, monkeypatch):
    """2-bit decode rows longer than 1024 codes go four (then two) weight rows per pass with the pass-ahead prefetch
    (qmv.cpp ``multi_rows``, session 12): the same bits as each row on its own, and within the int16-mode tolerance
    of the reference dequantize + matmul (the test above checks rows per pass at K <= 1024)."""
    monkeypatch.setenv("FMOE_THREADS", threads)
    rng = np.random.default_rng(91)
    # 1152: 18 groups (a partial 8-group step); 71 rows: 64-row chunks, then a quad, a pair and a single row
    for inp, out, scale_dtype in ((1152, 7, "bfloat16"), (2048, 71, "float32"), (4096, 9, "bfloat16")):
        q = quantize(_weights(rng, out, inp, 64), 2, 64, scale_dtype)
        x = torch.randn(1, inp)
        full = _variant_layer(q, isa)._native(x, mode=0)
        single = torch.cat([
            _variant_layer(QuantizedWeight(q.weight[n : n + 1], q.scales[n : n + 1], q.biases[n : n + 1], 2, 64),
                           isa)._native(x, mode=0)
            for n in range(out)
        ], dim=1)
        assert torch.equal(full, single), (isa, inp)
        ref = (x @ torch.from_numpy(dequantize(q)).t()).numpy()
        assert float(np.abs(full.numpy() - ref).max() / np.abs(ref).max()) <= 1e-3, (isa, inp)


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", BITS)
def test_isa_variants_match_reference(isa, bits):
    """Every variant this CPU runs against the reference dequantize + matmul (and mlx), every mode."""
    rng = np.random.default_rng(50 + bits)
    for group_size, inp in ((32, 800), (64, 1024), (128, 384)):
        q = quantize(_weights(rng, out=70, inp=inp, group_size=group_size), bits, group_size)
        layer = _variant_layer(q, isa)
        x = torch.randn(5, inp)
        ref = (x @ torch.from_numpy(dequantize(q)).t()).numpy()
        np.testing.assert_allclose(ref, _mx_matmul(x.numpy(), q), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(layer.dequantize(torch.float32).numpy(), dequantize(q))
        for mode, tol in ((0, 1e-3), (1, 1e-5), (2, 1e-5)):
            assert _rel(layer._native(x, mode=mode).numpy(), ref) <= tol, (isa, mode)
    assert native.load(isa).fmoe_qmv_isa().decode().startswith({"avx512": "avx512", "avx2": "avx2"}.get(isa, "gen"))


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", ("1", "2"))
def test_paired_decode_rows_equal_single_rows(isa, threads, monkeypatch):
    """Decode (one x row) with short rows goes two weight rows per pass: same bits as each row on its own, for
    odd row counts, chunk boundaries (256-row chunks at K = 1024) and both scale dtypes."""
    monkeypatch.setenv("FMOE_THREADS", threads)
    rng = np.random.default_rng(90)
    for group_size, inp, out, scale_dtype in ((64, 1024, 517, "bfloat16"), (128, 512, 37, "float32"),
                                              (64, 320, 9, "bfloat16"), (64, 2048, 5, "bfloat16")):
        q = quantize(_weights(rng, out=out, inp=inp, group_size=group_size), 4, group_size, scale_dtype)
        x = torch.randn(1, inp)
        full = _variant_layer(q, isa)._native(x, mode=0)
        single = torch.cat([
            _variant_layer(QuantizedWeight(q.weight[n : n + 1], q.scales[n : n + 1], q.biases[n : n + 1], 4,
                                           group_size), isa)._native(x, mode=0)
            for n in range(out)
        ], dim=1)
        assert torch.equal(full, single), (isa, group_size, inp)


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler")
def test_every_x86_variant_builds():
    """AVX-512 + VNNI must at least compile where the CPU cannot run it (g++ accepts the -m flags)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 variants")
    for isa in native.ISAS:
        assert native.build(isa=isa).exists()


def test_isa_selection_and_build_failure_warns(monkeypatch):
    flags = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    assert native.supported_isas(flags, "x86_64") == ["avx512", "avx2", "generic"]
    assert native.supported_isas({"avx2", "fma", "f16c"}, "x86_64") == ["avx2", "generic"]
    assert native.supported_isas(set(), "x86_64") == ["generic"]
    assert native.supported_isas(flags, "aarch64") == ["generic"]
    real = native._dlopen

    def failing(source, isa):
        if isa != "generic":
            raise RuntimeError("simulated compiler failure")
        return real(source, isa)

    monkeypatch.setattr(native, "_dlopen", failing)
    monkeypatch.setattr(native, "_loaded", {})
    if native.supported_isas()[0] == "generic":
        pytest.skip("this CPU runs only the generic variant")
    with pytest.warns(RuntimeWarning, match="slower generic variant"):
        lib = native.load()
    assert lib is not None and lib.fmoe_qmv_isa().decode().startswith("generic")


def test_threads_default_and_override(monkeypatch):
    monkeypatch.delenv("FMOE_THREADS", raising=False)
    assert 1 <= native.threads() == native.physical_cores() <= (os.cpu_count() or 1)
    monkeypatch.setenv("FMOE_THREADS", "3")
    assert native.threads() == 3


def _experts(rng, bits, group_size, hidden, inters):
    out = []
    for inter in inters:
        g = quantize(_weights(rng, out=inter, inp=hidden, group_size=group_size), bits, group_size)
        u = quantize(_weights(rng, out=inter, inp=hidden, group_size=group_size), bits, group_size)
        d = quantize(_weights(rng, out=hidden, inp=inter, group_size=group_size) * 3, bits, group_size)
        out.append((g, u, d))
    return out


def _mlp_ref(x, g, u, d):
    f = lambda q, v: v @ torch.from_numpy(dequantize(q)).t()  # noqa: E731
    return f(d, torch.nn.functional.silu(f(g, x)) * f(u, x))


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", BITS)
def test_fused_experts_match_per_expert(isa, bits):
    from fmoe.kernels.torch_qlinear import FusedExperts

    rng = np.random.default_rng(70 + bits)
    lib = native.load(isa)
    for group_size, hidden, inters in ((64, 256, (128, 128, 128)), (32, 320, (96, 160)), (128, 384, (128,) * 5)):
        qs = _experts(rng, bits, group_size, hidden, inters)
        layers = [tuple(_variant_layer(q, isa) for q in ew) for ew in qs]
        x = torch.from_numpy(rng.standard_normal((1, hidden)).astype(np.float32))
        w = rng.random(len(qs)).astype(np.float32)
        ref = sum(_mlp_ref(x, *ew) * float(wi) for ew, wi in zip(qs, w))
        # int16 mode: x and h = silu(g) * u are quantized per group (2^-16 of the group max), 2-bit weights amplify
        # it through cancellation; seen up to 3e-3 of max |y| over 300 random x (float32 modes: 2.3e-5)
        for mode, tol in ((0, 6e-3), (1, 1e-4), (2, 1e-4)):
            for ly in layers:
                for m in ly:
                    m.mode = mode
            f = FusedExperts.make(layers)
            assert f is not None and f._fn is not None
            f._fn = lib.fmoe_moe_fused
            assert _rel(f(x, w).numpy(), ref.numpy()) <= tol, (isa, mode, group_size)
            base = torch.randn(1, hidden)
            acc = base.clone()
            f(x, w, out=acc)
            assert _rel((acc - base).numpy(), ref.numpy()) <= tol
    # mixed widths are not fused (the caller keeps the per-matrix path)
    a = _experts(rng, bits, 64, 256, (128,))[0]
    b = _experts(rng, 4 if bits != 4 else 8, 64, 256, (128,))[0]
    assert FusedExperts.make([tuple(map(TorchQLinear, a)), tuple(map(TorchQLinear, b))]) is None


def test_sparse_moe_decode_fused_equals_per_expert():
    """SparseMoE's one-call decode (torch CPU float32) against the per-expert path it replaces."""
    from types import SimpleNamespace

    from fmoe.engine.backends.torch import TorchBackend
    from fmoe.engine.moe import MoEStats, SparseMoE

    rng = np.random.default_rng(5)
    ops = TorchBackend("float32")
    H, I, E = 256, 128, 8
    qs = _experts(rng, 4, 64, H, (I,) * E)
    shared = _experts(rng, 4, 64, H, (192,))[0]

    class Provider:
        def get(self, layer, ids):
            return [tuple(ops.prepare_linear(q) for q in qs[e]) for e in ids]

        def prefetch(self, layer, ids):
            pass

    weights = {"gate": rng.standard_normal((E, H)).astype(np.float32),
               "shared_expert_gate": rng.standard_normal((1, H)).astype(np.float32) * 0.1,
               "shared_gate_proj": shared[0], "shared_up_proj": shared[1], "shared_down_proj": shared[2]}
    weights = {k: ops.prepare_linear(v) for k, v in weights.items()}
    cfg = SimpleNamespace(num_experts_per_tok=3, norm_topk_prob=True, num_experts=E)
    moe = SparseMoE(ops, cfg, 0, weights, Provider(), MoEStats())
    x = torch.from_numpy(rng.standard_normal((1, H)).astype(np.float32))
    fused = moe(x)
    ops.fused_experts = lambda *a: None  # the per-expert path
    per_expert = moe(x)
    assert fused.shape == per_expert.shape == (1, H)
    assert _rel(fused.numpy(), per_expert.numpy()) <= 2e-3


def test_mlx_switch_glu_matches_per_expert():
    """MLX backend: gather_qmm over stacked experts (decode and sorted prefill) = the per-expert quantized_matmul."""
    from fmoe.engine.backends.mlx import MLXBackend, MLXQLinear

    rng = np.random.default_rng(9)
    ops = MLXBackend("float32")
    H, I, E, k = 256, 128, 6, 4
    qs = _experts(rng, 4, 64, H, (I,) * E)
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
        assert _rel(y, ref) <= 1e-5, T


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", (2, 3, 4))
def test_low_bit_decode_paths_match_reference(isa, bits, monkeypatch):
    """The 2/3/4-bit int16-activation paths (3 and 4 bits: deferred group sums, two weight rows per pass for K <=
    1024, 3 bits decoding 24-byte blocks by shuffle + multiply; 2 bits: split bytes, unrolled) against the reference
    dequantize + matmul, for group counts that are not a multiple of 8 (the partial 8-group tail), odd row counts
    (a single row after the pairs), K above the pairing limit, both scale dtypes and 1 or 2 threads; decode rows
    bit-identical to each weight row alone and prefill rows (four x rows per pass) bit-identical to single x rows."""
    rng = np.random.default_rng(130 + bits)
    cases = ((64, 832, 37, "bfloat16"), (128, 640, 9, "float32"), (64, 1216, 11, "bfloat16"),
             (64, 704, 5, "float32"), (32, 544, 7, "bfloat16"), (128, 1024, 258, "bfloat16"))
    for threads in ("1", "2"):
        monkeypatch.setenv("FMOE_THREADS", threads)
        for group_size, inp, out, scale_dtype in cases:
            q = quantize(_weights(rng, out=out, inp=inp, group_size=group_size), bits, group_size, scale_dtype)
            layer = _variant_layer(q, isa)
            x = torch.from_numpy(rng.standard_normal((6, inp)).astype(np.float32))   # seeded: int16 activations
            x[1] *= 1e-3  # a small-magnitude row next to normal ones                # err ~2e-4, tails near 1e-3
            ref = (x @ torch.from_numpy(dequantize(q)).t()).numpy()
            y = layer._native(x, mode=0)
            assert _rel(y.numpy(), ref) <= 1e-3, (isa, bits, group_size, inp)
            for m in range(6):
                ym = layer._native(x[m : m + 1], mode=0)
                assert torch.equal(ym, y[m : m + 1]), (isa, bits, group_size, inp, m)
                assert _rel(ym.numpy(), ref[m : m + 1]) <= 1e-3, (isa, bits, group_size, inp, m)
            single = torch.cat([
                _variant_layer(QuantizedWeight(q.weight[n : n + 1], q.scales[n : n + 1], q.biases[n : n + 1], bits,
                                               group_size), isa)._native(x[:1], mode=0)
                for n in range(out)
            ], dim=1)
            assert torch.equal(layer._native(x[:1], mode=0), single), (isa, bits, group_size, inp)


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", (2, 3, 4, 8))
def test_split_chunks_and_row_quads_bit_identical(isa, bits, monkeypatch):
    """Decode mat-vecs hand each thread its own contiguous range of row chunks (taken from the ends by the other
    thread once its own range is done), and 2/3-bit rows of K <= 1024 go four weight rows per pass (then pairs, then
    single rows): 2 threads bit-identical to 1 thread, every row bit-identical to that weight row alone (row counts
    of every remainder mod 4, rows around the 64-row chunk boundaries and at the end), and against dequantize +
    matmul."""
    rng = np.random.default_rng(170 + bits)
    for group_size, inp, out, scale_dtype in ((64, 256, 1031, "bfloat16"), (64, 1024, 130, "float32"),
                                              (128, 512, 66, "bfloat16"), (64, 128, 5, "bfloat16"),
                                              (64, 192, 8, "float32"), (32, 96, 4099, "float32")):
        q = quantize(_weights(rng, out=out, inp=inp, group_size=group_size), bits, group_size, scale_dtype)
        layer = _variant_layer(q, isa)
        x = torch.from_numpy(rng.standard_normal((1, inp)).astype(np.float32))
        ref = (x @ torch.from_numpy(dequantize(q)).t()).numpy()
        ys = {}
        for threads in ("1", "2"):
            monkeypatch.setenv("FMOE_THREADS", threads)
            for _ in range(3):  # repeated: which thread takes which chunk varies from call to call
                y = layer._native(x, mode=0)
                assert ys.setdefault(threads, y) is y or torch.equal(y, ys[threads]), (isa, bits, inp, out)
        assert torch.equal(ys["1"], ys["2"]), (isa, bits, group_size, inp, out)
        assert _rel(ys["1"].numpy(), ref) <= 1e-3, (isa, bits, group_size, inp, out)
        rows = sorted({n for n in (*range(0, 9), *range(60, 70), *range(124, 132), *range(out - 7, out))
                       if 0 <= n < out})
        for n in rows:
            single = _variant_layer(QuantizedWeight(q.weight[n : n + 1], q.scales[n : n + 1], q.biases[n : n + 1],
                                                    bits, group_size), isa)._native(x, mode=0)
            assert torch.equal(single[0, 0], ys["2"][0, n]), (isa, bits, group_size, inp, out, n)


def test_build_parts_setting(monkeypatch):
    from fmoe.errors import ConfigError

    monkeypatch.delenv("FMOE_BUILD_PARTS", raising=False)
    assert 1 <= native.build_parts() <= 3
    monkeypatch.setenv("FMOE_BUILD_PARTS", "5")
    assert native.build_parts() == 5
    for bad in ("0", "7", "two"):
        monkeypatch.setenv("FMOE_BUILD_PARTS", bad)
        with pytest.raises(ConfigError, match="FMOE_BUILD_PARTS"):
            native.build_parts()


@pytest.mark.skipif(native._compiler() is None or native.supported_isas()[0] == "generic",
                    reason="no C++ compiler or no SIMD variant on this CPU")
def test_one_object_and_parallel_parts_build_the_same_kernel(monkeypatch, tmp_path):
    """The SIMD variant as one object (a 1-CPU machine's build) and as 3 parts compiled in parallel: both load, and
    give bit-identical mat-vecs at every bit width."""
    import ctypes

    isa = native.supported_isas()[0]
    libs = []
    for parts in ("1", "3"):
        monkeypatch.setenv("FMOE_BUILD_PARTS", parts)
        monkeypatch.setenv("FMOE_CACHE_DIR", str(tmp_path / parts))
        lib = ctypes.CDLL(str(native.build(isa=isa)))
        for name, (res, args) in native._SIGNATURES[native._SRC].items():
            getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
        libs.append(lib)
    rng = np.random.default_rng(5)
    for bits in (2, 3, 4, 5, 6, 8):
        q = quantize(_weights(rng, out=70, inp=512, group_size=64), bits, 64)
        x = rng.standard_normal((2, 512)).astype(np.float32)
        outs = []
        for lib in libs:
            y = np.zeros((2, 70), np.float32)
            rc = lib.fmoe_qmv(q.weight.ctypes.data, q.scales.ctypes.data, q.biases.ctypes.data,
                              int(q.scales.dtype == np.uint16), x.ctypes.data, y.ctypes.data, 70, 512, 2, 512, 70,
                              bits, 64, 2, 0)
            assert rc == 0
            outs.append(y)
        np.testing.assert_array_equal(outs[0], outs[1])
        assert np.abs(outs[0] - x @ dequantize(q).T).max() <= 1e-3 * np.abs(x @ dequantize(q).T).max()
