"""The fused Gated DeltaNet decode step (fmoe/kernels/triton_deltanet.py) against the layer's torch ops
(fmoe/engine/gated_deltanet.py ``mix``) on a tiny model's linear-attention layer: the output and both states, over
several steps from an empty state, in place and into new tensors. On CUDA, or in Triton's interpreter with
FMOE_TRITON_INTERPRET=1 (CI has no Triton: skipped)."""
import numpy as np
import pytest
from triton_env import CUDA, DEVICE, INTERPRET, torch  # noqa: F401  (skips without GPU or interpreter)

from fmoe.engine.cache import LinearState  # noqa: E402
from fmoe.engine.model import Model  # noqa: E402
from fmoe.kernels.triton_deltanet import decode_step  # noqa: E402


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("dn")
    tiny_models.build_hf(root / "hf", "stream", seed=5)
    m = Model.load(root / "hf", backend="torch", dtype="float32")
    return next(lay.mixer for lay in m.layers if not lay.is_attention)


@pytest.mark.parametrize("in_place", [False, True])
def test_decode_step_matches_the_layer(layer, in_place):
    rng = np.random.default_rng(0)
    ref_state, state = LinearState(), None
    for step in range(4):
        x = torch.from_numpy(rng.standard_normal((1, layer.cfg.hidden_size)).astype(np.float32))
        qkv, z, b, a = layer.in_proj(x)
        ref = layer.mix(qkv, z, b, a, ref_state)
        if state is None:
            C = qkv.shape[-1]
            state = (torch.zeros(layer.K - 1, C, device=DEVICE), torch.zeros(layer.Hv, layer.dk, layer.dv,
                                                                            device=DEVICE))
        conv, S = state
        outs = (conv, S) if in_place else (torch.empty_like(conv), torch.empty_like(S))
        on = lambda t: t.contiguous().to(DEVICE)  # noqa: E731
        got = decode_step(on(qkv), on(z), on(b), on(a), conv, on(layer.conv_w), S, on(layer.neg_A),
                          on(layer.dt_bias), on(layer.norm), layer.cfg.rms_norm_eps,
                          (layer.Hk, layer.Hv, layer.dk, layer.dv), *outs)
        state = outs
        np.testing.assert_allclose(got.cpu().numpy(), ref.numpy(), rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
        np.testing.assert_allclose(state[0].cpu().numpy(), ref_state.conv.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state[1].cpu().numpy(), ref_state.recurrent.numpy(), rtol=1e-4, atol=1e-6)
