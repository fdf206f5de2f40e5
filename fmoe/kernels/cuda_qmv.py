"""Grouped quantized mat-vec on NVIDIA GPUs as a CUDA C++ kernel (fmoe/kernels/cuda_qmv.cu, built at run time by
NVRTC: fmoe/kernels/nvrtc.py), reading mlx's affine packed layout directly: no dequantized copy.

    y = grouped_qmv(x, w, scales, biases, slots, bits=4, group_size=64)          # y[r] = W[slots[r]] @ x[r]   (float32)
    h = grouped_gate_up(x, wg, sg, bg, wu, su, bu, slots, bits=4, group_size=64)  # silu(G[s] @ x) * (U[s] @ x), one pass
    if supports(x, w, scales, bits, group_size): ...                            # else the Triton kernel (triton_qmv.py)

Shapes and layout as fmoe/kernels/triton_qmv.py: ``w`` [S, out, in*bits/32] int32 words, ``scales``/``biases``
[S, out, in/group_size] bf16 or float32, each slot's matrix contiguous at any slot stride (the VRAM tier's expert
regions); ``x`` [R, in] or [1, in] (one x shared by every row), bf16 or float32; ``slots`` [R] int32.
Bit widths 2, 4 and 8 (whole codes per 32-bit word, 16-byte rows); 3/5/6 bits stay on the Triton kernel, as do rows
longer than 8 chunks per lane (4-bit: in > 8192). ``grouped_gate_up`` reads a token's gate and up matrices in one
launch and writes silu(gate) * up, which is the first half of an expert; the engine's decode calls it and then
``grouped_qmv`` on the down projection (fmoe/engine/device_experts.py).

Three kernels. The FMA kernel (``fmoe_qmv``, every width here; launch configuration: :func:`launch_config`, from
`fmoe bench kernels --device cuda --sweep` on the H200) and, at 4 bits on Ampere or later, the tensor-core kernel
(``fmoe_qmv4_mma``: :func:`supports_mma`; its variants in ``MMA_VARIANTS``, the engine's choice in
``MMA_DEFAULT``), which the launcher takes for one matrix before Hopper; gate+up takes the bulk-copy kernel on
Hopper and the FMA kernel before (``FMOE_CUDA_GATE_UP`` names another). ``kernel="fma"`` or a
``config`` forces the FMA kernel, ``kernel=<variant>`` a tensor-core variant (bench/results/cuda_kernels.md), and
``kernel="bulk"`` the int8 tensor-core kernel fed by bulk copies into shared memory (``fmoe_qmv4_bulk``, Hopper:
:func:`supports_bulk`), the engine's default where it runs (else "mma-b3" for one matrix). Its launches overlap the
stream's previous kernel (programmatic dependent launch, ``BULK_OVERLAP``; ``FMOE_CUDA_OVERLAP=0`` turns it off),
and with ``slots_ready=True`` (the caller vouches that the previous kernel wrote neither the slot table nor the
weights: the engine's down projection after gate+up) a block also starts its weight copies before that kernel has
finished. Scales and biases of 128-byte rows come by swizzled tensor copies (``BULK_SWIZZLE``); a 17th warp issues
the copies (``BULK_PRODUCER``; ``FMOE_CUDA_PRODUCER=0``: thread 0 between two stages' products), and one matrix of
512 or 1024 inputs (the down projection) runs whole rows a warp (``BULK_WHOLE_ROWS``, ``FMOE_CUDA_WHOLE_ROWS``).
Decode on the H200 (bench/results/cuda_stream.md, session 13), slots ready: gate+up 0.75-0.78 of HBM, the down
projection 0.66-0.68, one 1024 x 4096 matrix 0.65; 0.87-0.93 with 64 rows. ``OVERLAP_PRIOR`` (off by default) does
the same for the other kernels, which read their slots and weights before the wait.
"""
from __future__ import annotations

import ctypes
import functools
import os

import torch

from fmoe.kernels import nvrtc
from fmoe.kernels.slot_table import check_operands

BITS = (2, 4, 8)
MAX_CHUNKS_PER_LANE = 8
# fmoe_qmv4_mma variants: (inputs per warp, each warp stages its own x, blocks an SM for the launch bounds). Timed on
# the H200 (bench/results/cuda_stream.md, session 8): at decode every variant and the FMA kernel take ~11-13 us a
# 20 MB call; with 64 rows these two are the fastest (0.60-0.72 of HBM). "mma-b3" is the one-matrix kernel where the
# bulk-copy kernel cannot run (before compute capability 9.0); "mma-k256" has per-warp staging. Variants that were
# slower or no faster (no launch bounds, per-warp staging at 512 inputs, codes through shared memory by cp.async) were
# removed; their rows stay in the session 8 results.
MMA_VARIANTS = {"mma-b3": (512, 0, 3), "mma-k256": (256, 1, 2)}
BULK = "bulk"


def _kernel_from_env(var: str) -> str | None:
    """The 4-bit kernel environment variable ``var`` names: "bulk" (the default: Hopper; where it cannot run, "mma-b3"
    for one matrix, the FMA kernel for gate+up), a name of MMA_VARIANTS, or "fma" (the FMA kernel: None)."""
    name = os.environ.get(var, BULK)
    if name == "fma":
        return None
    if name in MMA_VARIANTS or name == BULK:
        return name
    raise ValueError(f"{var}={name!r}: one of 'fma', {BULK!r}, {', '.join(map(repr, MMA_VARIANTS))}")


# one matrix / gate+up (None: the FMA kernel). The H200, decode's 10 rows (bench/results/cuda_stream.md, session 10):
# gate+up bulk 18.9 us = 0.59 of HBM, the FMA kernel 21.1 (0.53), the mma variants 22.1-24.2
MMA_DEFAULT = {False: _kernel_from_env("FMOE_CUDA_QMV4"), True: _kernel_from_env("FMOE_CUDA_GATE_UP")}
# Programmatic dependent launch on compute capability 9.0+: a launch may start (issue its weight loads) while the
# stream's previous kernel drains; the kernels wait for the previous grid before reading x (nvrtc.Function.launch).
# Off by default: the kernels read the slot table before that wait, which is safe only where the previous kernel
# did not write it (the down projection after gate+up, a benchmark's fixed slot sets) but not where it did (the
# engine's gate+up right after index_select of the routing: its blocks may have exited before their writes are
# visible). Measured on the H200 with it on: 0.4-0.8 us less a decode call (bench/results/cuda_stream.md, session 9).
OVERLAP_PRIOR = False
_PROGRAM = nvrtc.Program(nvrtc.source_file("cuda_qmv.cu").read_text(), "cuda_qmv")


class _Args(ctypes.Structure):
    """QmvArgs of cuda_qmv.cu, field for field."""
    _fields_ = [("x", ctypes.c_void_p), ("x_stride", ctypes.c_longlong), ("w", ctypes.c_void_p),
                ("s", ctypes.c_void_p), ("b", ctypes.c_void_p), ("w2", ctypes.c_void_p), ("s2", ctypes.c_void_p),
                ("b2", ctypes.c_void_p), ("w_slot_stride", ctypes.c_longlong), ("s_slot_stride", ctypes.c_longlong),
                ("slots", ctypes.c_void_p), ("y", ctypes.c_void_p), ("n_out", ctypes.c_int), ("n_in", ctypes.c_int)]


_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}


def _chunks(n_in: int, bits: int) -> int:
    """16-byte chunks per row."""
    return n_in * bits // 128


def supports(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int) -> bool:
    """Whether this kernel runs these operands (else the caller takes the Triton kernel)."""
    if bits not in BITS or not x.is_cuda or scales.dtype not in _DTYPE_CODE or w.dtype != torch.int32:
        return False
    n_in = w.shape[2] * 32 // bits
    values_per_chunk = 128 // bits
    if n_in % values_per_chunk or n_in % group_size or group_size % 32:
        return False
    if -(-_chunks(n_in, bits) // 32) > MAX_CHUNKS_PER_LANE:
        return False
    return w.data_ptr() % 16 == 0 and (w.stride(0) * 4) % 16 == 0


def supports_mma(x: torch.Tensor, w: torch.Tensor, group_size: int, bits: int) -> bool:
    """Whether the tensor-core kernel (fmoe_qmv4_mma) runs these operands: 4 bits, groups of 32/64/128, 512, 1024,
    2048 or 4096 inputs (one to sixteen warps per 16-row tile), a GPU with bf16 mma (Ampere or later). The launcher
    takes it for one matrix before Hopper; gate+up goes to the FMA kernel there unless a variant is named (0.53 of
    HBM against 0.45-0.48 at decode on the H200: two matrices take 111-123 registers in this kernel)."""
    n_in = w.shape[2] * 32 // bits
    return bits == 4 and group_size in (32, 64, 128) and n_in in (512, 1024, 2048, 4096) and _has_bf16_mma(x.device)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _has_bf16_mma(device: torch.device) -> bool:
    """bf16 mma.sync: compute capability 8.0 (Ampere) and later."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device()) >= (8, 0)


BULK_STAGES = 2          # stage buffers of fmoe_qmv4_bulk in flight (None: as many as fit, at most 16 with the
                         # producer warp); 2 was the fastest of 1-6 on the H200 (bench/results/session9/
                         # call6_report.txt, call7_report.txt) and, with the producer warp, of 2, 3 and all that fit
                         # (bench/results/session12/call1.txt)
_BULK_STATIC_SMEM = 256 + 2048 * 4 + 1024 * 4 + 1024   # fmoe_qmv4_bulk's static shared memory (barriers, partial
                                                        # sums, gate rows) at up to 4 tiles a warp (the whole-rows
                                                        # instances' 8 tiles a unit: as much), and the swizzled
                                                        # stages' alignment: for supports_bulk and _whole_rows,
                                                        # before the kernel is loaded
BULK_TILES_PER_WARP = 2                  # 16-row tiles each warp multiplies a stage (they share its activations)


def _switch_from_env(var: str) -> bool:
    """An on/off setting of the bulk-copy kernel (``FMOE_CUDA_OVERLAP``, ``FMOE_CUDA_PRODUCER``: both on by default):
    "1" or "0"."""
    value = os.environ.get(var, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{var}={value!r}: '1' (on) or '0' (off)")
    return value == "1"


# fmoe_qmv4_bulk launches overlap the stream's previous kernel (programmatic dependent launch, compute capability
# 9.0+; FMOE_CUDA_OVERLAP=0 turns it off): safe for any caller, as a block reads nothing before griddepcontrol.wait
# unless slots_ready vouches for the slot table and the weights (the H200, session 11: bench/results/cuda_stream.md)
BULK_OVERLAP = _switch_from_env("FMOE_CUDA_OVERLAP")


# A 17th warp issues every copy and consumer warps release a buffer through its "empty" mbarrier (the kernel's PROD
# instances; FMOE_CUDA_PRODUCER=0: thread 0 of the computing warps issues them between two stages' products). The
# H200, decode's 10 rows, slots ready (bench/results/session12/call1.txt, call7; session13/call1.txt): gate+up
# 14.9 -> 14.3-14.9 us, 1024 x 4096 9.0-9.1 -> 8.6; 64 rows 0.88-0.90 -> 0.90-0.92 of HBM; the engine's (c) the same
# (105.9 against 106.9, 105.8 against 104.4 tok/s). The default since session 13, where the whole GPU suite passed with
# it (session13/call4) and the whole-rows kernel below, which needs it, took the down projection to 0.68 of HBM.
BULK_PRODUCER = _switch_from_env("FMOE_CUDA_PRODUCER")


def _tiles_from_env(var: str) -> int:
    """Tiles a unit of the whole-rows kernel (``FMOE_CUDA_WHOLE_ROWS``): "0" (off), 1, 2, 4 (the default) or 8."""
    value = os.environ.get(var, "4")
    if value not in ("0", "1", "2", "4", "8"):
        raise ValueError(f"{var}={value!r}: '0' (off) or the tiles of 16 rows a unit: '1', '2', '4' or '8'")
    return int(value)


# With the producer warp, one matrix of 512 or 1024 inputs (the down projection): whole rows a warp (the kernel's
# PROD 2 instances), units of BULK_WHOLE_ROWS tiles of 16 rows (FMOE_CUDA_WHOLE_ROWS, default 4; 0: off), so that no
# warp waits for another: 4096 x 1024 at decode's 10 rows 9.1-9.2 -> 8.2-8.4 us (0.61 -> 0.66-0.68 of HBM), 64 rows
# 0.81-0.83 -> 0.87-0.90 (bench/results/session13/call4, call5, call6)
BULK_WHOLE_ROWS = _tiles_from_env("FMOE_CUDA_WHOLE_ROWS")
BULK_WHOLE_STAGES = None                 # the whole-rows kernel's stage buffers at most (None: a block's units, as fit)
_WHOLE_ROWS_X = 4                        # table rows of x a block of the whole-rows kernel stages (its units' rows)
BULK_SWIZZLE = True      # scales and biases of 128-byte rows (4096 inputs, groups of 64, bf16) by swizzled tensor
                         # copies (the kernel's SWZ instances: no bank conflicts between a fragment's rows)


class _TensorMap(ctypes.Structure):
    """CUtensorMap: 128 opaque bytes (the kernel's TensorMap)."""
    _fields_ = [("opaque", ctypes.c_ulonglong * 16)]


class _BulkMaps(ctypes.Structure):
    """BulkMaps of cuda_qmv.cu: the scales' and biases' tensor maps (MODE 1: the up matrices' too)."""
    _fields_ = [("s", _TensorMap), ("b", _TensorMap), ("s2", _TensorMap), ("b2", _TensorMap)]


_NO_MAPS = _BulkMaps()


def _swizzled(s: torch.Tensor, n_in: int, group_size: int) -> bool:
    """Whether fmoe_qmv4_bulk takes a table's scales and biases by swizzled tensor copies: bf16 rows of 128 bytes,
    contiguous within a slot."""
    groups = n_in // group_size
    return BULK_SWIZZLE and s.dtype == torch.bfloat16 and groups * 2 == 128 and s.stride(1) == groups \
        and s.stride(2) == 1


@functools.lru_cache(maxsize=512)
def _tensor_map(ptr: int, slots: int, rows: int, groups: int, slot_bytes: int, box_rows: int) -> _TensorMap:
    """The tensor map of a [slots][rows][groups] table of 16-bit values (slot stride ``slot_bytes``), boxes of
    ``box_rows`` rows of one slot, 128-byte swizzle, 256-byte L2 promotion."""
    dims = (ctypes.c_uint64 * 3)(groups, rows, slots)
    strides = (ctypes.c_uint64 * 2)(groups * 2, slot_bytes)
    box = (ctypes.c_uint32 * 3)(groups, box_rows, 1)
    steps = (ctypes.c_uint32 * 3)(1, 1, 1)
    scratch = ctypes.create_string_buffer(2 * ctypes.sizeof(_TensorMap))   # the driver wants it 64 (128)-byte aligned
    at = (ctypes.addressof(scratch) + 127) & ~127
    rc = nvrtc._cuda().cuTensorMapEncodeTiled(ctypes.c_void_p(at), 1, 3, ctypes.c_void_p(ptr), dims, strides, box,
                                               steps, 0, 3, 3, 0)   # UINT16; no interleave, SWIZZLE_128B, L2 256B
    nvrtc._check_cu(rc, f"cuTensorMapEncodeTiled (a table of {slots} x {rows} x {groups}, slot stride {slot_bytes})")
    tm = _TensorMap()
    ctypes.memmove(ctypes.addressof(tm), at, ctypes.sizeof(tm))
    return tm


def _bulk_maps(mats, box_rows: int) -> _BulkMaps:
    """The kernel's BulkMaps of ``mats`` ((w, scales, biases) of one matrix, or gate's and up's)."""
    maps = _BulkMaps()
    names = (("s", "b"), ("s2", "b2"))
    for (_, sc, bi), (ns, nb) in zip(mats, names):
        for t, name in ((sc, ns), (bi, nb)):
            setattr(maps, name, _tensor_map(t.data_ptr(), t.shape[0], t.shape[1], t.shape[2], t.stride(0) * 2,
                                            box_rows))
    return maps


@functools.cache
def _sm_resources(index: int) -> tuple[int, int]:
    """(multiprocessors, opt-in shared memory bytes per block) of a device."""
    p = torch.cuda.get_device_properties(index)
    return p.multi_processor_count, getattr(p, "shared_memory_per_block_optin", 99 << 10)


def _bulk_shape(n_in: int, whole: int = 0) -> tuple[int, int]:
    """(inputs per warp, output rows per stage) of fmoe_qmv4_bulk: 16 warps over a stage's tiles of 16 rows, each
    warp BULK_TILES_PER_WARP tiles over its inputs; ``whole``: the whole-rows kernel's tiles a unit (a warp a tile)."""
    if whole:
        return n_in, 16 * whole
    kw = 256 if n_in == 4096 else 128
    return kw, 16 * (16 // (n_in // kw)) * BULK_TILES_PER_WARP


def supports_bulk(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int,
                  bits: int) -> bool:
    """Whether fmoe_qmv4_bulk runs these operands: those of :func:`supports_mma` on compute capability 9.0+ (bulk
    copies), output rows a multiple of a stage's (32 at 2048-4096 inputs, 64 at 1024, 128 at 512), and scales and biases
    16-byte aligned per slot (each stage's are one bulk copy)."""
    if not supports_mma(x, w, group_size, bits):
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    n_in = w.shape[2] * 32 // bits
    if _capability(index) < (9, 0) or w.shape[1] % _bulk_shape(n_in)[1] or _bulk_stages(
            scales, w.shape[1], n_in, 1, group_size, index, _BULK_STATIC_SMEM) < 1:
        return False
    return all(t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 for t in (w, scales, biases))


def _bulk_bytes(s, n_in: int, group_size: int, whole: int = 0) -> tuple[int, int]:
    """(bytes of one stage buffer, bytes of the staged x) of fmoe_qmv4_bulk's dynamic shared memory."""
    sr = _bulk_shape(n_in, whole)[1]
    stage = sr * n_in // 2 + 2 * sr * (n_in // group_size) * s.element_size()
    x_row = (n_in // 2 + 2 * (n_in // group_size)) * 4              # x as int8 digits h, l; sigma and sum a group
    return stage, x_row * (_WHOLE_ROWS_X if whole else 1)


def _bulk_units(n_out: int, n_in: int, rows: int, device: int, whole: int = 0) -> tuple[int, int, int]:
    """(stages of output rows of a call, blocks of fmoe_qmv4_bulk: one an SM at most, the most stages a block takes):
    the kernel splits the stages evenly over its blocks in order (u0 / u1)."""
    stages = rows * (n_out // _bulk_shape(n_in, whole)[1])
    blocks = min(_sm_resources(device)[0], stages)
    return stages, blocks, -(-stages // blocks)


def _bulk_stages(s, n_out: int, n_in: int, rows: int, group_size: int, device: int, static_bytes: int,
                 gate_up: bool = False, whole: int = 0) -> int:
    """Stage buffers of fmoe_qmv4_bulk: BULK_STAGES, at most what shared memory holds beside the staged x and the
    kernel's static arrays, at most one a unit of a block (gate+up: two units a stage of rows; 0: not even one
    fits). ``whole`` (tiles a unit of the whole-rows kernel): a buffer a unit of a block where they fit (no refills),
    else a multiple of its 16 / whole warp groups (bulk_whole_rows: no warp waits for a fill two phases ahead)."""
    stage_bytes, x_bytes = _bulk_bytes(s, n_in, group_size, whole)
    smem_max = _sm_resources(device)[1]
    per_block = _bulk_units(n_out, n_in, rows, device, whole)[2] * (2 if gate_up else 1)
    most = 16 if BULK_PRODUCER else 32                         # (PROD: the kernel's bars 16.. are "empty" ones)
    fit = (smem_max - static_bytes - x_bytes) // stage_bytes
    if whole:                                                  # (BULK_STAGES: the other kernels')
        cap = min(most, fit, BULK_WHOLE_STAGES or most)
        return per_block if per_block <= cap else cap // (16 // whole) * (16 // whole)
    return min(most, BULK_STAGES or most, fit, per_block)


def _whole_rows(x: torch.Tensor, s: torch.Tensor, n_out: int, n_in: int, rows: int, group_size: int, gate_up: bool,
                device: int) -> int:
    """Tiles a unit of the whole-rows kernel where it runs these operands (FMOE_CUDA_PRODUCER=1, BULK_WHOLE_ROWS, one
    matrix of 512 or 1024 inputs, a block's units over at most _WHOLE_ROWS_X table rows of x, its stage buffers in
    this GPU's shared memory), else 0 (the launcher keeps the split kernel)."""
    tiles = BULK_WHOLE_ROWS
    if not (BULK_PRODUCER and tiles and not gate_up and n_in in (512, 1024) and n_out % (16 * tiles) == 0):
        return 0
    per_row = n_out // (16 * tiles)
    most = _bulk_units(n_out, n_in, rows, device, tiles)[2]    # units of a block
    spanned = 1 if x.shape[0] == 1 else -(-(most - 1) // per_row) + 1
    if spanned > _WHOLE_ROWS_X or _bulk_stages(s, n_out, n_in, rows, group_size, device, _BULK_STATIC_SMEM,
                                                 whole=tiles) < 1:
        return 0
    return tiles


def _overlaps_prior(device_index: int) -> bool:
    """Whether launches ask for programmatic dependent launch: OVERLAP_PRIOR on compute capability 9.0+."""
    return OVERLAP_PRIOR and _capability(device_index) >= (9, 0)


def launch_config(n_in: int, bits: int, rows: int, gate_up: bool) -> tuple[int, int, int]:
    """(rows per warp and batch, warps per block, batches per warp): the fastest or within 3% of it for both 10 and
    64 rows in the H200 sweep (bench/results/session7/call4_sweep.txt); one batch per warp throughout, as a second
    batch in flight gained nothing at decode sizes."""
    per_lane = -(-_chunks(n_in, bits) // 32)
    if gate_up:
        return 1, 8, 1
    if per_lane <= 2:
        return 4, 8, 1
    return (2, 8, 1) if per_lane <= 4 else (1, 8, 1)


def _launch(x, mats, slots, bits: int, group_size: int, out, config, gate_up: bool, kernel,
            slots_ready: bool = False, trace: torch.Tensor | None = None) -> torch.Tensor:
    (w, s, b), up = mats[0], (mats[1] if gate_up else mats[0])
    n_out, n_in, rows = check_operands(x, w, s, b, slots, bits, group_size)
    if gate_up:
        check_operands(x, *up, slots, bits, group_size)
        if up[0].shape != w.shape or up[0].stride(0) != w.stride(0) or up[1].stride(0) != s.stride(0) \
                or up[1].dtype != s.dtype:
            raise ValueError("gate and up must share shapes, slot strides and dtypes")
    if kernel is not None and kernel not in ("fma", BULK, *MMA_VARIANTS):
        raise ValueError(f"kernel={kernel!r}: one of 'fma', {BULK!r}, {', '.join(map(repr, MMA_VARIANTS))}")
    if rows == 0:                                     # no rows: nothing to launch (a grid of 0 blocks is an error)
        return out if out is not None else torch.empty(0, n_out, dtype=torch.float32, device=x.device)
    if kernel is not None and kernel != "fma":
        if kernel == BULK:
            if config is not None or not all(supports_bulk(x, *m, group_size, bits) for m in mats):
                raise ValueError(f"kernel={kernel!r}: no FMA config, 4 bits, groups of 32/64/128, "
                                 f"512/1024/2048/4096 inputs, output rows a multiple of a stage's, 16-byte aligned "
                                 f"scales and compute capability 9.0 or later (got {bits} bits, group {group_size}, "
                                 f"{n_in} inputs, {n_out} outputs)")
        elif config is not None or not supports_mma(x, w, group_size, bits):
            raise ValueError(f"kernel={kernel!r}: the tensor-core kernel takes no FMA config and needs 4 bits, groups "
                             f"of 32/64/128, 512/1024/2048/4096 inputs and compute capability 8.0 or later "
                             f"(got {bits} bits, group {group_size}, {n_in} inputs)")
    if kernel is None and config is None and MMA_DEFAULT[gate_up] == BULK:
        if all(supports_bulk(x, *m, group_size, bits) for m in mats):
            kernel = BULK
        elif not gate_up:
            kernel = next(iter(MMA_VARIANTS))
    if x.dtype not in _DTYPE_CODE or x.stride(1) != 1:
        x = x.to(torch.float32).contiguous()
    if x.data_ptr() % 16 or (x.shape[0] > 1 and x.stride(0) * x.element_size() % 16):
        x = x.clone(memory_format=torch.contiguous_format)          # the kernel reads x in 16-byte loads
    y = out if out is not None else torch.empty(rows, n_out, dtype=torch.float32, device=x.device)
    args = _Args(x.data_ptr(), 0 if x.shape[0] == 1 else x.stride(0), w.data_ptr(), s.data_ptr(), b.data_ptr(),
                 up[0].data_ptr(), up[1].data_ptr(), up[2].data_ptr(), w.stride(0), s.stride(0), slots.data_ptr(),
                 y.data_ptr(), n_out, n_in)
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(x.device).cuda_stream
    mode = 1 if gate_up else 0
    if kernel == BULK:
        _launch_bulk(args, x, mats, n_out, n_in, rows, group_size, device, stream, gate_up, slots_ready, trace)
        return y
    variant = MMA_VARIANTS.get(kernel or MMA_DEFAULT[gate_up])
    if config is None and variant is not None and supports_mma(x, w, group_size, bits):
        x_t, s_t = _DTYPE_CODE[x.dtype], _DTYPE_CODE[s.dtype]
        ks, warp_stage, min_blocks = variant
        wpt = n_in // ks
        block_warps = max(8, wpt)
        if warp_stage:                                # per warp: x, then its zero block at a 16-byte boundary
            words = -(-((ks // 2 if x_t else ks) + ks // group_size) // 4) * 4 + group_size // 8
            smem = words * 4 * block_warps
        else:
            smem = ((n_in // 2 if x_t else n_in) + n_in // group_size) * 4
        fn = _PROGRAM.function(f"fmoe_qmv4_mma<{group_size}, {x_t}, {s_t}, {mode}, {wpt}, {ks}, {warp_stage}, "
                               f"{min_blocks}>", device)
        fn.launch((-(-n_out // (16 * (block_warps // wpt))), rows, 1), (32 * block_warps, 1, 1), smem, stream,
                  [args], _overlaps_prior(device))
        return y
    rpw, nw, nb = config or launch_config(n_in, bits, rows, gate_up)
    per_lane = -(-_chunks(n_in, bits) // 32)
    sub = min(group_size, 128 // bits)
    fn = _PROGRAM.function(f"fmoe_qmv<{bits}, {group_size}, {_DTYPE_CODE[x.dtype]}, {_DTYPE_CODE[s.dtype]}, {rpw}, "
                           f"{per_lane}, {mode}, {nb}>", device)
    per_block = nw * rpw * nb
    fn.launch(((n_out + per_block - 1) // per_block, rows, 1), (32 * nw, 1, 1), (n_in + n_in // sub) * 4, stream,
              [args], _overlaps_prior(device))
    return y


def _launch_bulk(args, x, mats, n_out: int, n_in: int, rows: int, group_size: int, device: int, stream,
                 gate_up: bool, slots_ready: bool = False, trace: torch.Tensor | None = None) -> None:
    """fmoe_qmv4_bulk: one block of 16 warps an SM (at most one per stage of rows), :func:`_bulk_stages` stage
    buffers, launched to overlap the previous kernel where BULK_OVERLAP (compute capability 9.0+), its slots read and
    first copies issued before the wait for it when ``slots_ready``. ``trace`` (bench/device/bulk_timeline.py): int64
    [blocks, 64], the blocks' timelines (the kernel's TRACE instance)."""
    whole = _whole_rows(x, mats[0][1], n_out, n_in, rows, group_size, gate_up, device)
    kw, sr = _bulk_shape(n_in, whole)
    s = mats[0][1]
    x_t, s_t = _DTYPE_CODE[x.dtype], _DTYPE_CODE[s.dtype]
    swz = all(_swizzled(m[1], n_in, group_size) and _swizzled(m[2], n_in, group_size) for m in mats)
    prod = 2 if whole else int(BULK_PRODUCER)
    fn = _PROGRAM.function(f"fmoe_qmv4_bulk<{group_size}, {x_t}, {s_t}, {kw}, {whole or BULK_TILES_PER_WARP}, "
                           f"{int(gate_up)}, {int(trace is not None)}, {int(swz)}, {prod}>", device)
    stages = _bulk_stages(s, n_out, n_in, rows, group_size, device, fn.static_shared + (1024 if swz else 0),
                          gate_up, whole)
    if stages < 1:
        raise ValueError(f"kernel='bulk': one stage of {sr} rows x {n_in} inputs does not fit in this GPU's shared "
                         f"memory ({_sm_resources(device)[1]} bytes a block)")
    stage_bytes, x_bytes = _bulk_bytes(s, n_in, group_size, whole)
    blocks = _bulk_units(n_out, n_in, rows, device, whole)[1]
    if trace is not None and (trace.dtype != torch.int64 or trace.numel() < 64 * blocks or not trace.is_contiguous()):
        raise ValueError(f"trace: a contiguous int64 tensor of at least 64 x {blocks} blocks")
    overlap = (BULK_OVERLAP or OVERLAP_PRIOR) and _capability(device) >= (9, 0)
    maps = _bulk_maps(mats, sr) if swz else _NO_MAPS
    fn.launch((blocks, 1, 1), (544 if BULK_PRODUCER else 512, 1, 1), stages * stage_bytes + x_bytes
              + (1024 if swz else 0), stream,
              [args, ctypes.c_int(rows), ctypes.c_int(stages), ctypes.c_int(int(overlap and slots_ready)),
               ctypes.c_void_p(trace.data_ptr() if trace is not None else 0), maps], overlap)


def grouped_qmv(x, w, scales, biases, slots, bits: int, group_size: int, out=None, config=None,
                kernel=None, slots_ready: bool = False) -> torch.Tensor:
    """``y[r] = dequant(w[slots[r]]) @ x[r]`` for every row r (x: [R, in] or [1, in] shared); float32 [R, out].
    The bulk-copy kernel where :func:`supports_bulk` (Hopper), else the tensor-core kernel where
    :func:`supports_mma` (``MMA_DEFAULT``), unless ``kernel="fma"`` or a ``config`` is given: (rows per warp, warps,
    batches per warp) of the FMA kernel, else :func:`launch_config`. ``kernel="bulk"`` or ``<a name of
    MMA_VARIANTS>``: that kernel (also for gate+up). ``slots_ready``: the caller vouches that the stream's previous
    kernel wrote neither ``slots`` nor the weights (the engine's down projection after gate+up), so the bulk-copy
    kernel starts its copies while that kernel drains."""
    return _launch(x, [(w, scales, biases)], slots, bits, group_size, out, config, False, kernel, slots_ready)


def grouped_gate_up(x, wg, sg, bg, wu, su, bu, slots, bits: int, group_size: int, out=None,
                    config=None, kernel=None, slots_ready: bool = False) -> torch.Tensor:
    """``silu(G[slots[r]] @ x[r]) * (U[slots[r]] @ x[r])`` for every row r; float32 [R, out]."""
    return _launch(x, [(wg, sg, bg), (wu, su, bu)], slots, bits, group_size, out, config, True, kernel, slots_ready)
