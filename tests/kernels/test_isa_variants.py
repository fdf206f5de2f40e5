"""The native CPU kernel's instruction-set variants (AVX-512 VNNI, AVX2, generic: each one this CPU runs) against the
reference dequantize + matmul, their row, chunk and thread paths bit-identical to single rows, and the fused experts
of a layer; the variants' builds and selection. No mlx needed, so they also run on hosts without it (the H200
machine's AVX-512 host: bench/device/session14_e.sh).

    python -m pytest tests/kernels/test_isa_variants.py
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fmoe.kernels import native
from fmoe.kernels.quant import QuantizedWeight, dequantize, quantize
from fmoe.kernels.torch_qlinear import TorchQLinear
from quant_cases import edge_weights, experts, rel_err

BITS = (2, 3, 4, 5, 6, 8)
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
@pytest.mark.parametrize("bits", (2, 3))
def test_long_rows_in_quads_equal_single_rows(isa, threads, bits, monkeypatch):
    """2-bit decode rows longer than 1024 codes go four (then two) weight rows per pass with the pass-ahead prefetch
    (qmv.cpp ``multi_rows``, session 12), 3-bit ones too in the AVX-512 build (session 15; two rows a 512-bit
    register): the same bits as each row on its own, and within the int16-mode tolerance of the reference dequantize
    + matmul (test_split_chunks_and_row_quads_bit_identical checks rows per pass at K <= 1024)."""
    monkeypatch.setenv("FMOE_THREADS", threads)
    rng = np.random.default_rng(91 + bits)
    # 1152: 18 groups (a partial 8-group step); 71 rows: 64-row chunks, then a quad, a pair and a single row
    for inp, out, scale_dtype in ((1152, 7, "bfloat16"), (2048, 71, "float32"), (4096, 9, "bfloat16")):
        q = quantize(edge_weights(rng, out, inp, 64), bits, 64, scale_dtype)
        x = torch.randn(1, inp)
        full = _variant_layer(q, isa)._native(x, mode=0)
        single = torch.cat([
            _variant_layer(QuantizedWeight(q.weight[n : n + 1], q.scales[n : n + 1], q.biases[n : n + 1], bits, 64),
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
    """Every variant this CPU runs against the reference dequantize + matmul (dequantize is bit-identical to mlx's:
    test_kernels.py), every mode."""
    rng = np.random.default_rng(50 + bits)
    for group_size, inp in ((32, 800), (64, 1024), (128, 384)):
        q = quantize(edge_weights(rng, out=70, inp=inp, group_size=group_size), bits, group_size)
        layer = _variant_layer(q, isa)
        x = torch.randn(5, inp)
        ref = (x @ torch.from_numpy(dequantize(q)).t()).numpy()
        np.testing.assert_array_equal(layer.dequantize(torch.float32).numpy(), dequantize(q))
        for mode, tol in ((0, 1e-3), (1, 1e-5), (2, 1e-5)):
            assert rel_err(layer._native(x, mode=mode).numpy(), ref) <= tol, (isa, mode)
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
        q = quantize(edge_weights(rng, out=out, inp=inp, group_size=group_size), 4, group_size, scale_dtype)
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
        qs = experts(rng, bits, group_size, hidden, inters)
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
            assert rel_err(f(x, w).numpy(), ref.numpy()) <= tol, (isa, mode, group_size)
            base = torch.randn(1, hidden)
            acc = base.clone()
            f(x, w, out=acc)
            assert rel_err((acc - base).numpy(), ref.numpy()) <= tol
    # mixed widths are not fused (the caller keeps the per-matrix path)
    a = experts(rng, bits, 64, 256, (128,))[0]
    b = experts(rng, 4 if bits != 4 else 8, 64, 256, (128,))[0]
    assert FusedExperts.make([tuple(map(TorchQLinear, a)), tuple(map(TorchQLinear, b))]) is None
    # what make() keeps on a gate layer serves only that gate with the same up and down: paired with a down of
    # another width it is checked again (and refused)
    ta, tc = tuple(map(TorchQLinear, a)), tuple(map(TorchQLinear, experts(rng, bits, 64, 256, (192,))[0]))
    assert FusedExperts.make([ta]) is not None and FusedExperts.make([tc]) is not None
    assert FusedExperts.make([(ta[0], ta[1], tc[2])]) is None
    assert FusedExperts.make([ta]) is not None


def test_sparse_moe_decode_fused_equals_per_expert():
    """SparseMoE's one-call decode (torch CPU float32) against the per-expert path it replaces."""
    from types import SimpleNamespace

    from fmoe.engine.backends.torch import TorchBackend
    from fmoe.engine.moe import MoEStats, SparseMoE

    rng = np.random.default_rng(5)
    ops = TorchBackend("float32")
    H, I, E = 256, 128, 8
    qs = experts(rng, 4, 64, H, (I,) * E)
    shared = experts(rng, 4, 64, H, (192,))[0]

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
    assert rel_err(fused.numpy(), per_expert.numpy()) <= 2e-3


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
            q = quantize(edge_weights(rng, out=out, inp=inp, group_size=group_size), bits, group_size, scale_dtype)
            layer = _variant_layer(q, isa)
            x = torch.from_numpy(rng.standard_normal((6, inp)).astype(np.float32))   # seeded: int16 activations
            x[1] *= 1e-3  # a small-magnitude row next to normal ones                # err ~2e-4, tails near 1e-3
            ref = (x @ torch.from_numpy(dequantize(q)).t()).numpy()
            y = layer._native(x, mode=0)
            assert rel_err(y.numpy(), ref) <= 1e-3, (isa, bits, group_size, inp)
            for m in range(6):
                ym = layer._native(x[m : m + 1], mode=0)
                assert torch.equal(ym, y[m : m + 1]), (isa, bits, group_size, inp, m)
                assert rel_err(ym.numpy(), ref[m : m + 1]) <= 1e-3, (isa, bits, group_size, inp, m)
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
        q = quantize(edge_weights(rng, out=out, inp=inp, group_size=group_size), bits, group_size, scale_dtype)
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
        assert rel_err(ys["1"].numpy(), ref) <= 1e-3, (isa, bits, group_size, inp, out)
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
        q = quantize(edge_weights(rng, out=70, inp=512, group_size=64), bits, 64)
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


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
def test_rms_norm_matches_reference(isa):
    """fmoe_rms_norm (the CPU decode's RMSNorm in one call) against a float64 reference, in every variant: widths
    with and without a vector tail, rows at a stride wider than a row (a view of heads), a row of zeros; bad sizes are
    refused."""
    lib = native.load(isa)
    if lib is None:
        pytest.skip(f"{isa} kernel unavailable: {native.load_error(isa)}")
    rng = np.random.default_rng(11)
    for rows, n, stride in ((1, 4096, 4096), (8, 4096, 4096), (32, 256, 768), (3, 33, 33), (5, 129, 200), (2, 7, 7)):
        x = (rng.standard_normal((rows, stride)) * rng.uniform(0.01, 100)).astype(np.float32)
        x[-1, :n] = 0.0 if rows > 2 else x[-1, :n]
        w = rng.standard_normal(n).astype(np.float32)
        y = np.full((rows, n), np.nan, np.float32)
        assert lib.fmoe_rms_norm(x.ctypes.data, stride, w.ctypes.data, y.ctypes.data, rows, n, 1e-6) == 0
        xv = x[:, :n].astype(np.float64)
        ref = xv / np.sqrt((xv * xv).mean(-1, keepdims=True) + 1e-6) * w
        assert rel_err(y, ref) <= 1e-6, (isa, rows, n, stride)
        torch_y = torch.nn.functional.rms_norm(torch.from_numpy(x[:, :n].copy()), (n,), torch.from_numpy(w), 1e-6)
        assert rel_err(y, torch_y.numpy()) <= 1e-6, (isa, rows, n, stride)
    y = np.zeros((1, 8), np.float32)
    w = np.ones(8, np.float32)
    assert lib.fmoe_rms_norm(y.ctypes.data, 4, w.ctypes.data, y.ctypes.data, 1, 8, 1e-6) == -1   # stride < width
    assert lib.fmoe_rms_norm(y.ctypes.data, 8, w.ctypes.data, y.ctypes.data, 1, 0, 1e-6) == -1


@pytest.mark.parametrize("isa", ISAS)
def test_read_peer_reads_every_word(isa):
    """fmoe_read_bytes (the mat-vec's read-only peer in `fmoe bench kernels`' memory read bandwidth) reads every byte
    it is given, in every variant and thread count: its XOR of the 64-bit words equals numpy's (sizes a multiple of
    64 bytes, partial last chunk, several 64 KB chunks); other sizes are refused."""
    import ctypes

    lib = native.load(isa)
    if lib is None:
        pytest.skip(f"{isa} kernel unavailable: {native.load_error(isa)}")
    rng = np.random.default_rng(12)
    a = rng.integers(0, 2**63, size=40_000, dtype=np.uint64)
    out = ctypes.c_uint64()
    for words in (0, 8, 8192, 8200, 40_000):
        for threads in (1, 2, 3):
            out.value = 12345
            assert lib.fmoe_read_bytes(a.ctypes.data, 8 * words, threads, ctypes.byref(out)) == 0
            assert out.value == int(np.bitwise_xor.reduce(a[:words])), (words, threads)   # (0 words: 0)
    assert lib.fmoe_read_bytes(a.ctypes.data, 100, 1, ctypes.byref(out)) == -1


def test_backend_rms_norm_native_and_torch_paths():
    """TorchBackend.rms_norm on CPU float32: a few rows (decode) by the native call, within 1e-6 of torch's op, for a
    contiguous row, a strided view of heads and a non-contiguous copy case; more than 64 rows (prefill) and
    ``native_norm`` off keep torch's op, bit for bit."""
    from fmoe.engine.backends.torch import TorchBackend

    if native.load() is None:
        pytest.skip(f"native kernel unavailable: {native.load_error()}")
    ops = TorchBackend("float32")
    torch.manual_seed(0)
    qkv = torch.randn(1, 3 * 32 * 256)
    cases = [torch.randn(1, 4096), qkv[:, : 32 * 256].view(1, 32, 256), qkv.view(1, 96, 256)[:, ::3],
             torch.randn(256, 4).t(), torch.randn(65, 512)]
    for x in cases:
        w = torch.randn(x.shape[-1])
        ref = torch.nn.functional.rms_norm(x, (x.shape[-1],), w, 1e-6)
        y = ops.rms_norm(x, w, 1e-6)
        assert y.shape == x.shape and y.is_contiguous() and rel_err(y.numpy(), ref.numpy()) <= 1e-6
        if x.numel() > 64 * x.shape[-1]:
            assert torch.equal(y, ref)
        ops.native_norm = False
        assert torch.equal(ops.rms_norm(x, w, 1e-6), ref)
        ops.native_norm = True

