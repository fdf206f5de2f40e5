"""The native gated delta rule step (``fmoe_delta_step`` in qmv.cpp, used by fmoe/kernels/delta_rule.py for one
token on the torch CPU backend) against the torch ops it replaces, over several steps; the input state is never
written (snapshots may hold it). And the whole one-token Gated DeltaNet layer step in one call (``fmoe_gdn_step``,
TorchBackend._gated_delta_step_native) against the layer's torch ops (GatedDeltaNet.mix), chained over steps."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fmoe.engine.backends.torch import TorchBackend
from fmoe.engine.cache import LinearState
from fmoe.engine.gated_deltanet import GatedDeltaNet
from fmoe.kernels import delta_rule, native


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("H, dk, dv", [(4, 32, 32), (8, 128, 128), (3, 16, 48)])
def test_native_step_matches_torch(H, dk, dv):
    rng = np.random.default_rng(H * dk + dv)
    fast = TorchBackend("float32")
    plain = TorchBackend("float32")
    plain.delta_step = None                      # the torch ops
    t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    S_fast = S_ref = t(H, dk, dv) * 0.1
    for _ in range(3):
        q, k = torch.nn.functional.normalize(t(1, H, dk), dim=-1), torch.nn.functional.normalize(t(1, H, dk), dim=-1)
        v, g, beta = t(1, H, dv), -torch.rand(1, H), torch.sigmoid(t(1, H))
        before = S_fast.clone()
        o_fast, S_fast_new = delta_rule.recurrent(fast, q, k, v, g, beta, S_fast)
        assert torch.equal(S_fast, before)       # the input state is left as it was
        o_ref, S_ref = delta_rule.recurrent(plain, q, k, v, g, beta, S_ref)
        S_fast = S_fast_new
        np.testing.assert_allclose(o_fast.numpy(), o_ref.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(S_fast.numpy(), S_ref.numpy(), rtol=1e-5, atol=1e-6)


def _step(lib, q, k, v, g, beta, S, S_out):
    H, dk, dv = S.shape
    o = torch.empty((H, dv), dtype=torch.float32)
    assert lib.fmoe_delta_step(q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), beta.data_ptr(), S.data_ptr(),
                               S_out.data_ptr(), o.data_ptr(), H, q.shape[0], dk, dv, 2) == 0
    return o


@pytest.mark.parametrize("isa", native.supported_isas())
@pytest.mark.parametrize("H, dk, dv", [(8, 128, 128), (3, 16, 48), (5, 20, 13)])
def test_isa_variants_same_bits(isa, H, dk, dv):
    """The SIMD step (vectorized over dv, scalar tail) makes the same float32 operations per element as the portable
    loops: every variant gives the generic build's bits, out of place and in place (S_out = S)."""
    lib, ref = native.load(isa), native.load("generic")
    if lib is None or ref is None:
        pytest.skip(f"native kernel unavailable: {native.load_error(isa) or native.load_error('generic')}")
    rng = np.random.default_rng(dk + dv)
    t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    q, k, v, g, beta, S = t(H, dk), t(H, dk), t(H, dv), -torch.rand(H), torch.rand(H), t(H, dk, dv)
    S_ref = torch.empty_like(S)
    o_ref = _step(ref, q, k, v, g, beta, S, S_ref)
    S_out = torch.empty_like(S)
    assert torch.equal(_step(lib, q, k, v, g, beta, S, S_out), o_ref) and torch.equal(S_out, S_ref)
    S_in = S.clone()
    assert torch.equal(_step(lib, q, k, v, g, beta, S_in, S_in), o_ref) and torch.equal(S_in, S_ref)


# (Hk, Hv, dk, dv, K): the 397B shape (a 4 MiB state: non-temporal stores), GQA and not, odd sizes (scalar tails)
GDN_SHAPES = [(16, 64, 128, 128, 4), (2, 8, 64, 32, 4), (3, 3, 16, 48, 2), (2, 6, 20, 13, 4), (1, 2, 8, 8, 1)]


def _gdn_layer(Hk, Hv, dk, dv, K, rng, scale=1.0):
    cfg = SimpleNamespace(linear_num_key_heads=Hk, linear_num_value_heads=Hv, linear_key_head_dim=dk,
                          linear_value_head_dim=dv, linear_conv_kernel_dim=K, rms_norm_eps=1e-6)
    C = 2 * Hk * dk + Hv * dv
    t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    w = {"in_proj": None, "out_proj": None, "conv1d": t(C, K) * 0.5 * scale, "A_log": t(Hv), "dt_bias": t(Hv),
         "norm": 1 + 0.1 * t(dv)}
    return GatedDeltaNet(TorchBackend("float32"), cfg, w), C


def _close(fast, ref, tol=1e-5):
    """max |fast - ref| within tol of the reference's scale (its largest magnitude)."""
    scale = max(float(ref.abs().max()), 1e-30)
    assert float((fast - ref).abs().max()) <= tol * scale, float((fast - ref).abs().max()) / scale


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("Hk, Hv, dk, dv, K", GDN_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_native_layer_step_matches_torch_ops(Hk, Hv, dk, dv, K, scale):
    """Six tokens chained from an empty state: output, recurrent state and conv state against GatedDeltaNet.mix
    (scale 8: saturated SiLUs, softplus past its threshold, gates near 0 and 1); the states handed in are never
    written (a snapshot shares them) and come back as new tensors."""
    rng = np.random.default_rng(Hk * 1000 + Hv * 100 + dk + dv + K + int(scale))
    layer, C = _gdn_layer(Hk, Hv, dk, dv, K, rng, scale)
    ops = layer.ops
    t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    fast, ref = LinearState(), LinearState()
    for step in range(6):
        qkv, z, b, a = t(1, C) * scale, t(1, Hv * dv) * scale, t(1, Hv) * scale, t(1, Hv) * 3 * scale
        held = (fast.conv, fast.recurrent)
        kept = tuple(None if x is None else x.clone() for x in held)
        y = ops._gated_delta_step_native(qkv, z, b, a, fast, layer)
        assert y is not None and y.shape == (1, Hv * dv) and y.dtype == torch.float32
        for x, before in zip(held, kept):
            assert x is None or torch.equal(x, before)
        assert fast.conv is not held[0] and fast.recurrent is not held[1]
        y_ref = layer.mix(qkv, z, b, a, ref)
        _close(y, y_ref)
        _close(fast.recurrent, ref.recurrent)
        assert torch.equal(fast.conv, ref.conv)        # the kept conv inputs are copies: exact


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
def test_native_layer_step_static_state_in_place():
    """A captured step's fixed state (static) is advanced in place, to the values a new state gets."""
    rng = np.random.default_rng(5)
    Hk, Hv, dk, dv, K = 2, 8, 64, 32, 4
    layer, C = _gdn_layer(Hk, Hv, dk, dv, K, rng)
    ops = layer.ops
    t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    conv, S = t(K - 1, C), t(Hv, dk, dv) * 0.1
    fixed = LinearState(conv.clone(), S.clone(), static=True)
    ptrs = (fixed.conv.data_ptr(), fixed.recurrent.data_ptr())
    new = LinearState(conv.clone(), S.clone())
    for _ in range(3):
        qkv, z, b, a = t(1, C), t(1, Hv * dv), t(1, Hv), t(1, Hv)
        y_fixed = ops._gated_delta_step_native(qkv, z, b, a, fixed, layer)
        y_new = ops._gated_delta_step_native(qkv, z, b, a, new, layer)
        assert (fixed.conv.data_ptr(), fixed.recurrent.data_ptr()) == ptrs
        assert torch.equal(y_fixed, y_new) and torch.equal(fixed.conv, new.conv)
        assert torch.equal(fixed.recurrent, new.recurrent)


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
def test_native_layer_step_falls_back(monkeypatch):
    """Not float32, or no native library: None (the layer then runs its torch ops)."""
    rng = np.random.default_rng(6)
    layer, C = _gdn_layer(2, 4, 16, 16, 4, rng)
    ops = layer.ops
    x = lambda n: torch.zeros(1, n, dtype=torch.bfloat16)  # noqa: E731
    assert ops._gated_delta_step_native(x(C), x(64), x(4), x(4), LinearState(), layer) is None
    monkeypatch.setattr(native, "load", lambda isa=None: None)
    z = lambda n: torch.zeros(1, n)  # noqa: E731
    assert ops._gated_delta_step_native(z(C), z(64), z(4), z(4), LinearState(), layer) is None


@pytest.mark.parametrize("isa", native.supported_isas())
@pytest.mark.parametrize("Hk, Hv, dk, dv, K", GDN_SHAPES[1:])
def test_gdn_isa_variants_close(isa, Hk, Hv, dk, dv, K):
    """Every variant (the SIMD exp / SiLU and the portable std::exp forms) within tolerance of the torch ops, out of
    place and in place, from a zero (NULL) state and a given one."""
    lib = native.load(isa)
    if lib is None:
        pytest.skip(f"native kernel unavailable: {native.load_error(isa)}")
    rng = np.random.default_rng(dk * dv + K)
    layer, C = _gdn_layer(Hk, Hv, dk, dv, K, rng)
    t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    taps = layer.conv_w.t().contiguous()
    for start in (None, (t(K - 1, C), t(Hv, dk, dv) * 0.1)):
        qkv, z, b, a = t(C), t(Hv * dv), t(Hv), t(Hv)
        ref = LinearState(*(x.clone() for x in start)) if start else LinearState()
        y_ref = layer.mix(qkv[None], z[None], b[None], a[None], ref)
        for in_place in ((False, True) if start else (False,)):
            conv, S = (x.clone() for x in start) if start else (None, None)
            conv_out, S_out = (conv, S) if in_place else (torch.empty(K - 1, C), torch.empty(Hv, dk, dv))
            y = torch.empty(1, Hv * dv)
            p = lambda x: None if x is None else x.data_ptr()  # noqa: E731
            assert lib.fmoe_gdn_step(qkv.data_ptr(), z.data_ptr(), b.data_ptr(), a.data_ptr(), p(conv),
                                     conv_out.data_ptr(), taps.data_ptr(), p(S), S_out.data_ptr(),
                                     layer.neg_A.data_ptr(), layer.dt_bias.data_ptr(), layer.norm.data_ptr(), 1e-6,
                                     y.data_ptr(), Hk, Hv, dk, dv, K, 2) == 0
            _close(y, y_ref)
            _close(S_out, ref.recurrent)
            assert torch.equal(conv_out, ref.conv)
