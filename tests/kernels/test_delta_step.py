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
