"""The fused GPU RMSNorm (fmoe/kernels/triton_norm.py) against the torch backend's ops, on contiguous and strided
rows (attention's q is a slice of the q/gate projection). On CUDA, or in Triton's interpreter with
FMOE_TRITON_INTERPRET=1 (CI has no Triton: skipped)."""
import numpy as np
import pytest
from triton_env import CUDA, DEVICE, INTERPRET, torch  # noqa: F401  (skips without GPU or interpreter)

from fmoe.engine.backends.torch import TorchBackend  # noqa: E402
from fmoe.kernels.triton_norm import rms_norm  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, strided", [((1, 4096), False), ((3, 8, 256), True), ((2, 64, 128), False)])
def test_rms_norm_matches_the_torch_ops(dtype, shape, strided):
    rng = np.random.default_rng(0)
    full = torch.from_numpy(rng.standard_normal((*shape[:-1], 2 * shape[-1])).astype(np.float32)).to(DEVICE, dtype)
    x = full[..., :shape[-1]] if strided else full[..., :shape[-1]].contiguous()
    w = torch.from_numpy(rng.standard_normal(shape[-1]).astype(np.float32)).to(DEVICE)
    ref = TorchBackend.rms_norm(None, x, w, 1e-6)
    got = rms_norm(x, w, 1e-6)
    assert got.dtype == x.dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    np.testing.assert_allclose(got.float().cpu().numpy(), ref.float().cpu().numpy(), rtol=tol, atol=tol)
