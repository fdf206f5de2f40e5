"""RMSNorm on the GPU in one kernel (Triton): ``y = x * rsqrt(mean(x^2) + eps) * w``, computed in float32 and stored
in x's dtype, as the torch backend's ``rms_norm`` (six small kernels there; a decode step makes about three norms
per layer).

    y = rms_norm(x, w, eps)      # x [..., D] on CUDA (rows may sit at a stride), w [D]

``TRITON_INTERPRET=1`` runs it on the CPU (the tests do where no GPU exists).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm(x_ptr, w_ptr, y_ptr, x_row_stride, D: tl.constexpr, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    x = tl.load(x_ptr + row * x_row_stride + offs, mask=m, other=0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    w = tl.load(w_ptr + offs, mask=m, other=0).to(tl.float32)
    tl.store(y_ptr + row * D + offs, (x * r * w).to(y_ptr.dtype.element_ty), mask=m)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        _rms_norm[(x2.shape[0],)](x2, w, y, x2.stride(0), D, float(eps), BLOCK=triton.next_power_of_2(D),
                                  num_warps=4 if D >= 1024 else 1)
    return y
