"""Grouped quantized mat-vec on torch tensors: ``y[r] = dequant(W[slots[r]]) @ x[r]``, whatever the device.

    y = grouped_qmv(x, w, scales, biases, slots, bits=4, group_size=64)    # float32 [R, out]

On CUDA with Triton this is the Triton kernel (fmoe/kernels/triton_qmv.py: reads the packed words, no dequantized
copy); elsewhere (a CPU tensor, or no Triton) the same result from torch ops: the R slots' matrices gathered,
dequantized in float32 and multiplied, which is what the tests of the VRAM tier run on a machine without a GPU.
Shapes as in triton_qmv: ``w`` [S, out, in*bits/32] int32, ``scales``/``biases`` [S, out, in/group_size], each slot
contiguous at any slot stride; ``x`` [R, in] or [1, in] (shared by every row); ``slots`` [R] int32.
"""
from __future__ import annotations

import torch

from fmoe.kernels import gpu
from fmoe.kernels.quant import QuantizedWeight

def grouped_qmv(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, slots: torch.Tensor,
                bits: int, group_size: int) -> torch.Tensor:
    if x.is_cuda:
        kernel = gpu.kernels("triton_qmv")
        if kernel is not None:
            return kernel.grouped_qmv(x, w, scales, biases, slots, bits, group_size)
    return grouped_qmv_torch(x, w, scales, biases, slots, bits, group_size)


def grouped_qmv_torch(x, w, scales, biases, slots, bits: int, group_size: int) -> torch.Tensor:
    """The reference: gather, dequantize (float32, as fmoe.kernels.quant.dequantize), batched mat-vec."""
    from fmoe.kernels.torch_qlinear import dequantize_torch

    idx = slots.to(torch.int64)
    q = QuantizedWeight(w.index_select(0, idx), scales.index_select(0, idx), biases.index_select(0, idx), bits,
                        group_size)
    dense = dequantize_torch(q, torch.float32)                      # [R, out, in]
    xs = x.to(torch.float32).expand(idx.numel(), -1)
    return torch.bmm(dense, xs[:, :, None])[:, :, 0]
