"""The operands of a grouped quantized mat-vec over a table of expert slots, checked once for every GPU kernel.

    n_out, n_in, rows = check_operands(x, w, scales, biases, slots, bits, group_size)   # or ValueError naming the operand

``w`` [S, out, in * bits / 32] int32 words, ``scales``/``biases`` [S, out, in / group_size] of one dtype and one slot
stride, each slot's matrix contiguous (slots may sit at any stride: the VRAM tier's expert regions); ``x`` [R, in] or
[1, in] (one x shared by every row); ``slots`` [R] contiguous int32. Used by fmoe/kernels/cuda_qmv.py and
fmoe/kernels/triton_qmv.py.
"""
from __future__ import annotations

import torch


def check_operands(x, w, scales, biases, slots, bits: int, group_size: int) -> tuple[int, int, int]:
    n_slots, n_out, n_words = w.shape
    n_in = n_words * 32 // bits
    rows = slots.numel()
    if x.dim() != 2 or x.shape[-1] != n_in or x.shape[0] not in (1, rows):
        raise ValueError(f"x {tuple(x.shape)} does not match {rows} rows of in_features {n_in}")
    if scales.shape != (n_slots, n_out, n_in // group_size) or biases.shape != scales.shape:
        raise ValueError(f"scales/biases {tuple(scales.shape)} do not match w {tuple(w.shape)} at group {group_size}")
    for name, t in (("w", w), ("scales", scales), ("biases", biases)):
        if t.stride(2) != 1 or t.stride(1) != t.shape[2]:
            raise ValueError(f"{name}: each slot's matrix must be contiguous (strides {tuple(t.stride())})")
    if scales.stride(0) != biases.stride(0) or scales.dtype != biases.dtype:
        raise ValueError("scales and biases must share one slot stride and dtype")
    if slots.dtype != torch.int32 or not slots.is_contiguous():
        raise ValueError(f"slots must be a contiguous int32 tensor, got {slots.dtype}")
    return n_out, n_in, rows
