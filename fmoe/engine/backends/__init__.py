"""The factory that picks an array backend (the ``Backend`` protocol of fmoe.engine.interfaces).

    ops = get_backend("torch", dtype="bfloat16", device="cuda")     # fmoe.engine.backends.torch.TorchBackend
    ops = get_backend("mlx")                                        # fmoe.engine.backends.mlx.MLXBackend
"""
from __future__ import annotations

from fmoe.engine.interfaces import Backend
from fmoe.errors import BackendError

BACKENDS = ("torch", "mlx")


def get_backend(name: str = "torch", dtype: str = "float32", device: str | None = None) -> Backend:
    """``torch`` (CPU, or CUDA when ``device='cuda'``) or ``mlx``; compute dtype ``float32`` or ``bfloat16``."""
    if dtype not in ("float32", "bfloat16"):
        raise BackendError(f"unknown compute dtype {dtype!r}; choose float32 or bfloat16")
    if name == "torch":
        from fmoe.engine.backends.torch import TorchBackend
        return TorchBackend(dtype=dtype, device=device)
    if name == "mlx":
        try:
            from fmoe.engine.backends.mlx import MLXBackend
        except ImportError as e:
            raise BackendError(f"backend 'mlx' is not available ({e}); install mlx (Linux: pip install 'mlx[cpu]')") from None
        return MLXBackend(dtype=dtype)
    raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
