"""The native gated delta rule step (``fmoe_delta_step`` in qmv.cpp, used by fmoe/kernels/delta_rule.py for one
token on the torch CPU backend) against the torch ops it replaces, over several steps; the input state is never
written (snapshots may hold it)."""
import numpy as np
import pytest
import torch

from fmoe.engine.backends.torch import TorchBackend
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
