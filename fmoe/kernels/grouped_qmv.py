"""Grouped quantized mat-vec on torch tensors: ``y[r] = dequant(W[slots[r]]) @ x[r]``, whatever the device.

    y = grouped_qmv(x, w, scales, biases, slots, bits=4, group_size=64)    # float32 [R, out]
    h = grouped_gate_up(x, (wg, sg, bg), (wu, su, bu), slots, bits=4, group_size=64)  # silu(G x) * (U x), float32

On CUDA this is, best first: the CUDA C++ kernel (fmoe/kernels/cuda_qmv.py: bits 2/4/8, gate and up in one pass),
the Triton kernel (fmoe/kernels/triton_qmv.py: every width); both read the packed words, no dequantized copy.
``FMOE_GPU_QMV=triton`` skips the CUDA kernel. A kernel that cannot be built is reported once with a warning naming
the path taken instead. Elsewhere (a CPU tensor, or no GPU kernel) the same result from torch ops: the R slots'
matrices gathered, dequantized in float32 and multiplied, which is what the tests of the VRAM tier run on a machine
without a GPU. Shapes as in triton_qmv: ``w`` [S, out, in*bits/32] int32, ``scales``/``biases``
[S, out, in/group_size], each slot contiguous at any slot stride; ``x`` [R, in] or [1, in] (shared by every row);
``slots`` [R] int32.
"""
from __future__ import annotations

import os
import warnings

import torch

from fmoe.kernels import gpu
from fmoe.kernels.quant import QuantizedWeight


def _cuda_kernel(x, w, scales, bits: int, group_size: int):
    """fmoe.kernels.cuda_qmv when it runs these operands, else None."""
    if os.environ.get("FMOE_GPU_QMV", "cuda") == "triton":
        return None
    mod = gpu.kernels("cuda_qmv")
    return mod if mod is not None and mod.supports(x, w, scales, bits, group_size) else None


def _guard(call, fallback):
    """The CUDA kernel's result, or (once it fails to build or load: warned once) the fallback's from then on."""
    if not _BROKEN:
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - NVRTC missing or a driver error: the Triton path, said once
            from fmoe.kernels.nvrtc import NvrtcError

            if not isinstance(e, NvrtcError):
                raise
            _BROKEN.append(str(e))
            warnings.warn(f"CUDA grouped mat-vec unavailable ({e}); using the Triton kernel instead")
    return fallback()


_BROKEN: list = []


def grouped_qmv(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, slots: torch.Tensor,
                bits: int, group_size: int, slots_ready: bool = False) -> torch.Tensor:
    """``y[r] = W[slots[r]] @ x[r]`` (float32 [R, out]). ``slots_ready``: the stream's previous kernel wrote neither
    ``slots`` nor the weights (the CUDA kernel may then start its weight copies while that kernel drains)."""
    if x.is_cuda:
        triton = gpu.kernels("triton_qmv")

        def fallback():
            if triton is not None:
                return triton.grouped_qmv(x, w, scales, biases, slots, bits, group_size)
            return grouped_qmv_torch(x, w, scales, biases, slots, bits, group_size)

        cuda = _cuda_kernel(x, w, scales, bits, group_size)
        if cuda is not None:
            return _guard(lambda: cuda.grouped_qmv(x, w, scales, biases, slots, bits, group_size,
                                                   slots_ready=slots_ready), fallback)
        return fallback()
    return grouped_qmv_torch(x, w, scales, biases, slots, bits, group_size)


def grouped_gate_up(x: torch.Tensor, gate, up, slots: torch.Tensor, bits: int, group_size: int,
                    slots_ready: bool = False) -> torch.Tensor:
    """``silu(G[slots[r]] @ x[r]) * (U[slots[r]] @ x[r])`` (float32 [R, out]); ``gate``/``up``: (w, scales, biases)
    tables of the same shapes and slot strides. One launch on CUDA where the CUDA kernel runs these operands.
    ``slots_ready``: as for :func:`grouped_qmv`."""
    def apart():
        g = grouped_qmv(x, *gate, slots, bits, group_size)
        return torch.nn.functional.silu(g) * grouped_qmv(x, *up, slots, bits, group_size)

    if x.is_cuda:
        cuda = _cuda_kernel(x, gate[0], gate[1], bits, group_size)
        if cuda is not None and cuda.supports(x, up[0], up[1], bits, group_size):     # both 16-byte aligned
            return _guard(lambda: cuda.grouped_gate_up(x, *gate, *up, slots, bits, group_size,
                                                       slots_ready=slots_ready), apart)
    return apart()


def grouped_qmv_torch(x, w, scales, biases, slots, bits: int, group_size: int) -> torch.Tensor:
    """The reference: gather, dequantize (float32, as fmoe.kernels.quant.dequantize), batched mat-vec."""
    from fmoe.kernels.torch_qlinear import dequantize_torch

    idx = slots.to(torch.int64)
    q = QuantizedWeight(w.index_select(0, idx), scales.index_select(0, idx), biases.index_select(0, idx), bits,
                        group_size)
    dense = dequantize_torch(q, torch.float32)                      # [R, out, in]
    xs = x.to(torch.float32).expand(idx.numel(), -1)
    return torch.bmm(dense, xs[:, :, None])[:, :, 0]
