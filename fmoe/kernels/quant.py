"""mlx affine group-wise quantization in numpy (bit-identical to ``mx.quantize`` / ``mx.dequantize``).

Format (mlx "affine" mode): for every row and every group of ``group_size`` consecutive input elements
``w ~= scale * q + bias`` with ``q`` an unsigned ``bits``-bit integer.  ``q`` values are packed along the
input dimension into a little-endian bit stream, least-significant bits first, stored as uint32 words:

* bits 2, 4, 8: ``32 // bits`` values per uint32 word, element ``k`` of a word in bits ``[k*bits, (k+1)*bits)``;
* bits 3, 5, 6: one LSB-first bit stream over bytes, in units of ``lcm(bits, 8)`` bits (3: 8 values per 3 bytes,
  5: 8 values per 5 bytes, 6: 4 values per 3 bytes); the byte stream is viewed as uint32, so a value may straddle
  two uint32 words (this is how mlx packs 3/5/6 bits).

``scales`` / ``biases`` have shape ``[..., out, in // group_size]``; here they are bf16, held in numpy as uint16
bit patterns (or float32 when ``scale_dtype="float32"`` is asked for).

The quantizer follows mlx's CPU kernel (``mlx/backend/cpu/quantized.cpp``) step by step in float32:
``scale = max((max - min) / n_bins, 1e-7)`` signed towards the edge of larger magnitude, ``q0 = rint(edge/scale)``,
``scale = edge / q0, bias = edge`` when ``q0 != 0``, ``q = clip(rint((w - bias) / scale), 0, n_bins)`` computed
with the float32 scale/bias, then scale/bias rounded (nearest-even) to the storage dtype.  So for a float32
input ``quantize(w)`` has the same packed words as ``mx.quantize(w)`` and scales/biases equal to mlx's float32
ones rounded to bf16; for a bf16-representable input it equals ``mx.quantize(w.astype(bf16))`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)

__all__ = [
    "SUPPORTED_BITS",
    "SUPPORTED_GROUP_SIZES",
    "QuantizedWeight",
    "quantize",
    "dequantize",
    "pack",
    "unpack",
    "bf16_to_f32",
    "f32_to_bf16",
    "packed_in_words",
    "check_bits_group",
]


# ----------------------------------------------------------------------------------------------- bf16 helpers


def f32_to_bf16(x: Any) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays a (quiet) NaN."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = a.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded = np.where(nan, ((u >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16), rounded)
    return rounded


def bf16_to_f32(x: Any) -> np.ndarray:
    """bf16 bit patterns (uint16 / int16 numpy array) -> float32 (exact)."""
    a = np.asarray(x)
    if a.dtype == np.int16:
        a = a.view(np.uint16)
    if a.dtype != np.uint16:
        raise ValueError(f"bf16 arrays must be held as uint16 bit patterns, got dtype {a.dtype}")
    return (a.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _scales_to_f32(x: Any) -> np.ndarray:
    """scales/biases (bf16 as uint16, float16, float32, or a torch tensor) -> float32 numpy."""
    x = _to_numpy(x)
    if x.dtype in (np.uint16, np.int16):
        return bf16_to_f32(x)
    if x.dtype in (np.float32, np.float16, np.float64):
        return x.astype(np.float32, copy=False)
    raise ValueError(f"unsupported scales/biases dtype {x.dtype}")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        if t.dtype == torch.uint32:  # torch >= 2.3 has uint32 with limited op support
            return t.view(torch.int32).numpy().view(np.uint32)
        return t.numpy()
    if mod.startswith("mlx"):
        import mlx.core as mx

        if x.dtype == mx.bfloat16:
            return np.array(x.view(mx.uint16))
        return np.array(x)
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------- validation


def check_bits_group(bits: int, group_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {SUPPORTED_GROUP_SIZES}, got {group_size!r}")


def packed_in_words(in_features: int, bits: int) -> int:
    """Number of uint32 words per row holding ``in_features`` values of ``bits`` bits."""
    if (in_features * bits) % 32:
        raise ValueError(f"in_features={in_features} * bits={bits} is not a multiple of 32")
    return in_features * bits // 32


# ----------------------------------------------------------------------------------------------- container


@dataclass
class QuantizedWeight:
    """A quantized linear weight in mlx's affine format.

    weight: uint32 ``[..., out, in * bits // 32]``; scales, biases: ``[..., out, in // group_size]`` (bf16 as uint16
    in numpy, or torch bfloat16 / float tensors).  numpy arrays or torch tensors are accepted.
    """

    weight: Any
    scales: Any
    biases: Any
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        check_bits_group(self.bits, self.group_size)
        ws, ss, bs = tuple(self.weight.shape), tuple(self.scales.shape), tuple(self.biases.shape)
        if len(ws) < 2:
            raise ValueError(f"weight must have at least 2 dims [out, packed_in], got shape {ws}")
        if ss != bs:
            raise ValueError(f"scales shape {ss} != biases shape {bs}")
        if ss[:-1] != ws[:-1]:
            raise ValueError(f"scales shape {ss} does not match weight shape {ws}")
        in_from_w = ws[-1] * 32 // self.bits
        if (ws[-1] * 32) % self.bits or in_from_w != ss[-1] * self.group_size:
            raise ValueError(
                f"weight shape {ws} (bits={self.bits}) and scales shape {ss} (group_size={self.group_size}) disagree"
            )

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[-2])

    @property
    def in_features(self) -> int:
        return int(self.scales.shape[-1]) * self.group_size

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(a) for a in (self.weight, self.scales, self.biases))

    def numpy(self) -> QuantizedWeight:
        """Same weight with numpy arrays (uint32 words, uint16 bf16 patterns if scales were bf16)."""
        w = _to_numpy(self.weight)
        if w.dtype == np.int32:
            w = w.view(np.uint32)
        return QuantizedWeight(w, _to_numpy(self.scales), _to_numpy(self.biases), self.bits, self.group_size)


def _nbytes(a: Any) -> int:
    if hasattr(a, "nbytes"):
        return int(a.nbytes)
    return int(a.numel() * a.element_size())  # torch


# ----------------------------------------------------------------------------------------------- pack / unpack


def _byte_unit(bits: int) -> tuple[int, int]:
    """(values, bytes) of one packing unit for the widths that do not divide 32: lcm(bits, 8) bits."""
    return {3: (8, 3), 5: (8, 5), 6: (4, 3)}[bits]


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integer codes ``q[..., in]`` (values < 2**bits) into uint32 words ``[..., in*bits//32]``."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    q = np.asarray(q)
    lead, n = q.shape[:-1], q.shape[-1]
    nwords = packed_in_words(n, bits)
    if bits in (3, 5, 6):
        vals, nb = _byte_unit(bits)
        if n % vals:
            raise ValueError(f"{bits}-bit packing needs in_features % {vals} == 0")
        v = q.astype(np.uint64).reshape(*lead, n // vals, vals)
        shifts = np.arange(vals, dtype=np.uint64) * np.uint64(bits)
        unit = np.bitwise_or.reduce(v << shifts, axis=-1)  # [..., n/vals] values of vals*bits bits
        b = np.empty((*lead, n // vals, nb), dtype=np.uint8)
        for i in range(nb):
            b[..., i] = (unit >> np.uint64(8 * i)) & np.uint64(0xFF)
        return np.ascontiguousarray(b.reshape(*lead, n * bits // 8)).view(np.uint32).reshape(*lead, nwords)
    epw = 32 // bits
    v = q.astype(np.uint32).reshape(*lead, nwords, epw)
    shifts = np.arange(epw, dtype=np.uint32) * np.uint32(bits)
    return np.bitwise_or.reduce(v << shifts, axis=-1).astype(np.uint32)


def unpack(w: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`: uint32 words ``[..., nwords]`` -> uint8 codes ``[..., nwords*32//bits]``."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    w = np.ascontiguousarray(_to_numpy(w))
    if w.dtype == np.int32:
        w = w.view(np.uint32)
    if w.dtype != np.uint32:
        raise ValueError(f"packed weight must be uint32, got {w.dtype}")
    lead, nwords = w.shape[:-1], w.shape[-1]
    n = nwords * 32 // bits
    if bits in (3, 5, 6):
        vals, nb = _byte_unit(bits)
        b = w.view(np.uint8).reshape(*lead, n // vals, nb).astype(np.uint64)
        unit = b[..., 0].copy()
        for i in range(1, nb):
            unit |= b[..., i] << np.uint64(8 * i)
        shifts = np.arange(vals, dtype=np.uint64) * np.uint64(bits)
        mask = np.uint64((1 << bits) - 1)
        return ((unit[..., None] >> shifts) & mask).astype(np.uint8).reshape(*lead, n)
    epw = 32 // bits
    shifts = np.arange(epw, dtype=np.uint32) * np.uint32(bits)
    mask = np.uint32((1 << bits) - 1)
    return ((w[..., None] >> shifts) & mask).astype(np.uint8).reshape(*lead, n)


# ----------------------------------------------------------------------------------------------- quantize


def quantize(w: Any, bits: int = 4, group_size: int = 64, scale_dtype: str = "bfloat16") -> QuantizedWeight:
    """Quantize ``w[..., out, in]`` (float32) like ``mx.quantize(w, group_size, bits)`` (mlx CPU algorithm).

    ``scale_dtype``: ``"bfloat16"`` (default; uint16 bit patterns, as in mlx-community checkpoints) or ``"float32"``
    (then scales/biases equal mlx's float32 outputs exactly).
    """
    check_bits_group(bits, group_size)
    if scale_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"scale_dtype must be 'bfloat16' or 'float32', got {scale_dtype!r}")
    a = _to_numpy(w)
    if a.dtype in (np.uint16, np.int16):  # bf16 bit patterns
        a = bf16_to_f32(a)
    if a.dtype.kind != "f":
        raise ValueError(f"w must be a floating point array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim < 2:
        raise ValueError(f"w must have at least 2 dims [out, in], got shape {a.shape}")
    n = a.shape[-1]
    if n % group_size:
        raise ValueError(f"in_features={n} is not divisible by group_size={group_size}")
    lead = a.shape[:-1]
    g = a.reshape(*lead, n // group_size, group_size)

    f = np.float32
    n_bins = f((1 << bits) - 1)
    eps = f(1e-7)
    w_max = g.max(axis=-1)
    w_min = g.min(axis=-1)
    mask = np.abs(w_min) > np.abs(w_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.maximum((w_max - w_min) / n_bins, eps).astype(f)
        scale = np.where(mask, scale, -scale)
        edge = np.where(mask, w_min, w_max)
        q0 = np.rint(edge / scale)
        nz = q0 != 0
        scale = np.where(nz, edge / np.where(nz, q0, f(1)), scale).astype(f)
        bias = np.where(nz, edge, f(0)).astype(f)
        q = np.rint((g - bias[..., None]) / scale[..., None])
    q = np.clip(q, f(0), n_bins)
    q = np.nan_to_num(q, nan=0.0).astype(np.uint32).reshape(*lead, n)
    packed = pack(q, bits)
    if scale_dtype == "bfloat16":
        return QuantizedWeight(packed, f32_to_bf16(scale), f32_to_bf16(bias), bits, group_size)
    return QuantizedWeight(packed, scale, bias, bits, group_size)


def dequantize(q: QuantizedWeight, compute: str = "float32") -> np.ndarray:
    """``scale * q + bias`` -> ``[..., out, in]`` float32 numpy.

    ``compute="float32"`` (default): float32 multiply then float32 add (no FMA) with the scales/biases widened exactly
    to float32.  Bit-identical to ``mx.dequantize(w, scales.astype(float32), biases.astype(float32), ...)``, i.e. the
    exact float32 evaluation of the stored weight.

    ``compute="bfloat16"``: emulates mlx's bf16 arithmetic (product rounded to bf16, then sum rounded to bf16); the
    float32 result is bit-identical to ``mx.dequantize(w, scales_bf16, biases_bf16, ...).astype(float32)``.
    """
    if not isinstance(q, QuantizedWeight):
        raise ValueError(f"expected a QuantizedWeight, got {type(q).__name__}")
    if compute not in ("float32", "bfloat16"):
        raise ValueError(f"compute must be 'float32' or 'bfloat16', got {compute!r}")
    codes = unpack(q.weight, q.bits)
    s = _scales_to_f32(q.scales)
    b = _scales_to_f32(q.biases)
    lead = codes.shape[:-1]
    n = codes.shape[-1]
    gs = q.group_size
    out = codes.reshape(*lead, n // gs, gs).astype(np.float32)
    out *= s[..., None]
    if compute == "bfloat16":
        out = bf16_to_f32(f32_to_bf16(out))
    out += b[..., None]
    if compute == "bfloat16":
        out = bf16_to_f32(f32_to_bf16(out))
    return out.reshape(*lead, n)
