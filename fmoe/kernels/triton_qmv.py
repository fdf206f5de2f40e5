"""Grouped quantized mat-vec on the GPU (Triton), reading mlx's affine packed layout directly: no dequantized copy.

    y = grouped_qmv(x, w, scales, biases, slots, bits=4, group_size=64)    # y[r] = W[slots[r]] @ x[r]   (float32)
    y = grouped_qmv(x[None], w, scales, biases, slots, ...)                # one x shared by every row (gate, up)

``w``: ``[S, out, in * bits / 32]`` uint32 words (int32 tensors in torch) of S expert slots (a table the caller fills:
the VRAM expert cache, or one matrix with S = 1); ``scales``/``biases``: ``[S, out, in / group_size]`` bf16 (or fp32).
Each slot's matrix is contiguous, but slots may sit at any stride: the VRAM tier keeps one byte region per expert
(fmoe/engine/device_experts.py) and passes strided views of it;
``x``: ``[R, in]`` or ``[1, in]`` activations (bf16 or fp32); ``slots``: ``[R]`` int32. One launch runs every row of a
layer's routed experts (the K experts of a decode token, or all (token, expert) pairs of a prefill chunk).

Dequantization as mlx: ``w = scale * q + bias`` per group, so a group's contribution is
``scale * (q . x) + bias * sum(x)``. Codes are a little-endian bit stream: value j sits at bit ``j * bits``. For
2/4/8 bits a uint32 word holds 32/bits whole values; 3/5/6-bit codes cross word boundaries and are read from bytes
(the byte kernel, ``FMOE_TRITON_UNITS=0``), or by default from units of 3 words (5 at 5 bits) that hold whole codes
at positions known at compile time (the unit kernel: 3-5x faster on the H200, see ``use_units``).

Runs on CUDA; ``TRITON_INTERPRET=1`` runs the same kernel on the CPU (the tests do, where no GPU exists).
"""
from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

from fmoe.kernels.slot_table import check_operands

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)


@triton.jit
def _program_rows(w_ptr, slot_ptr, x_ptr, x_row_stride, w_slot_stride, s_slot_stride, n_out: tl.constexpr,
                  PITCH: tl.constexpr, GROUPS: tl.constexpr, BLOCK_N: tl.constexpr):
    """What program (i, r) of every kernel here works on: table row r, output rows i * BLOCK_N.. and their mask, the
    rows' first packed elements (PITCH elements of w_ptr a row), their scale/bias index (GROUPS a row) and the x row.
    Returns (r, n, n_ok, w_rows, s_rows, x_row)."""
    row = tl.program_id(1)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = w_ptr + slot * w_slot_stride + n.to(tl.int64)[:, None] * PITCH
    s_rows = slot * s_slot_stride + n.to(tl.int64)[:, None] * GROUPS
    x_row = x_ptr + row.to(tl.int64) * x_row_stride
    return row, n, n < n_out, w_rows, s_rows, x_row


@triton.jit
def _qmv_words(x_ptr, w_ptr, s_ptr, b_ptr, slot_ptr, y_ptr, n_out: tl.constexpr, n_in: tl.constexpr, x_row_stride,
               w_slot_stride, s_slot_stride,
               BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """2/4/8 bits: whole values per uint32 word. Value e of word w is element w * EPW + e, so each of the EPW
    shifts multiplies a [BLOCK_N, WORDS] tile by the strided activations x[w * EPW + e]."""
    EPW: tl.constexpr = 32 // BITS                     # values per word
    WORDS: tl.constexpr = BLOCK_K // EPW               # words per row per step
    WPG: tl.constexpr = GROUP // EPW                   # words per group
    MASK: tl.constexpr = (1 << BITS) - 1
    words_per_row: tl.constexpr = n_in // EPW
    row, n, n_ok, w_rows, s_rows, x_row = _program_rows(w_ptr, slot_ptr, x_ptr, x_row_stride, w_slot_stride,
                                                        s_slot_stride, n_out, words_per_row, n_in // GROUP, BLOCK_N)
    acc = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
    for w0 in range(0, words_per_row, WORDS):
        wi = w0 + tl.arange(0, WORDS)
        words = tl.load(w_rows + wi[None, :], mask=n_ok[:, None], other=0)                 # [BLOCK_N, WORDS]
        # sum_e q_e * x_e without an int->float conversion per value (a quarter-rate instruction): value e, moved to
        # the top of a float's mantissa under the exponent of 1.0, is f_e = 1 + q_e / 2^BITS exactly, so
        # sum_e q_e x_e = 2^BITS * (sum_e f_e x_e - sum_e x_e): one shift, one logic op and one FMA per value
        fx = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
        xsum = tl.zeros((WORDS,), dtype=tl.float32)
        for e in tl.static_range(EPW):
            if 23 - BITS - e * BITS >= 0:
                top = words << (23 - BITS - e * BITS)
            else:
                top = words >> (e * BITS + BITS - 23)
            f = ((top & (MASK << (23 - BITS))) | 0x3F800000).to(tl.float32, bitcast=True)
            xe = tl.load(x_row + wi * EPW + e).to(tl.float32)
            fx += f * xe[None, :]
            xsum += xe
        dot = (fx - xsum[None, :]) * (1 << BITS)
        gi = wi // WPG
        sc = tl.load(s_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        bi = tl.load(b_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        acc += dot * sc + bi * xsum[None, :]
    tl.store(y_ptr + row.to(tl.int64) * n_out + n, tl.sum(acc, axis=1), mask=n_ok)


@triton.jit
def _qmv_units(x_ptr, w_ptr, s_ptr, b_ptr, slot_ptr, y_ptr, n_out: tl.constexpr, n_in: tl.constexpr, x_row_stride,
               w_slot_stride, s_slot_stride,
               BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """3/5/6 bits: codes cross words, but every U words hold V whole codes (3 bits: 32 codes in 3 words, 5 bits: 32
    in 5, 6 bits: 16 in 3), and where each code sits in its unit is known at compile time. So each unit's words are
    loaded once ([BLOCK_N, UNITS] tiles), and each of the V codes is a shift and a mask (an OR of two shifted words
    where it crosses one), then the word kernel's float trick and one FMA."""
    U: tl.constexpr = 5 if BITS == 5 else 3            # words per unit
    V: tl.constexpr = 32 * U // BITS                   # codes per unit
    UNITS: tl.constexpr = BLOCK_K // V                 # units per row per step
    MASK: tl.constexpr = (1 << BITS) - 1
    row, n, n_ok, w_rows, s_rows, x_row = _program_rows(w_ptr, slot_ptr, x_ptr, x_row_stride, w_slot_stride,
                                                        s_slot_stride, n_out, n_in * BITS // 32, n_in // GROUP, BLOCK_N)
    acc = tl.zeros((BLOCK_N, UNITS), dtype=tl.float32)
    for u0 in range(0, n_in // V, UNITS):
        ui = u0 + tl.arange(0, UNITS)
        base = w_rows + (ui * U)[None, :]
        w0 = tl.load(base, mask=n_ok[:, None], other=0).to(tl.uint32, bitcast=True)
        w1 = tl.load(base + 1, mask=n_ok[:, None], other=0).to(tl.uint32, bitcast=True)
        w2 = tl.load(base + 2, mask=n_ok[:, None], other=0).to(tl.uint32, bitcast=True)
        w3 = w2
        w4 = w2
        if U == 5:
            w3 = tl.load(base + 3, mask=n_ok[:, None], other=0).to(tl.uint32, bitcast=True)
            w4 = tl.load(base + 4, mask=n_ok[:, None], other=0).to(tl.uint32, bitcast=True)
        fx = tl.zeros((BLOCK_N, UNITS), dtype=tl.float32)
        xsum = tl.zeros((UNITS,), dtype=tl.float32)
        for e in tl.static_range(V):
            wd = e * BITS // 32
            off = e * BITS % 32
            if wd == 0:
                cur = w0
                nxt = w1
            elif wd == 1:
                cur = w1
                nxt = w2
            elif wd == 2:
                cur = w2
                nxt = w3
            elif wd == 3:
                cur = w3
                nxt = w4
            else:
                cur = w4
                nxt = w4
            q = cur >> off
            if off + BITS > 32:                          # the code's high bits open the next word
                q = q | (nxt << (32 - off))
            # 1 + q / 2^BITS exactly: the code under the exponent of 1.0 (as in the word kernel)
            f = (((q & MASK) << (23 - BITS)) | 0x3F800000).to(tl.float32, bitcast=True)
            xe = tl.load(x_row + ui * V + e).to(tl.float32)
            fx += f * xe[None, :]
            xsum += xe
        dot = (fx - xsum[None, :]) * (1 << BITS)
        gi = (ui * V) // GROUP
        sc = tl.load(s_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        bi = tl.load(b_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        acc += dot * sc + bi * xsum[None, :]
    tl.store(y_ptr + row.to(tl.int64) * n_out + n, tl.sum(acc, axis=1), mask=n_ok)


@triton.jit
def _qmv_bytes(x_ptr, w_ptr, s_ptr, b_ptr, slot_ptr, y_ptr, n_out: tl.constexpr, n_in: tl.constexpr, x_row_stride,
               w_slot_stride, s_slot_stride,
               BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Any width up to 8 bits: each value read from the two bytes that hold it (3-bit codes cross words)."""
    bytes_per_row: tl.constexpr = n_in * BITS // 8
    row, n, n_ok, b_rows, s_rows, x_row = _program_rows(w_ptr, slot_ptr, x_ptr, x_row_stride, w_slot_stride,
                                                        s_slot_stride, n_out, bytes_per_row, n_in // GROUP, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, n_in, BLOCK_K):
        j = k0 + tl.arange(0, BLOCK_K)
        bit = j * BITS
        lo = tl.load(b_rows + (bit // 8)[None, :], mask=n_ok[:, None], other=0).to(tl.uint32)
        hi_ok = (bit // 8 + 1) < bytes_per_row
        hi = tl.load(b_rows + (bit // 8 + 1)[None, :], mask=n_ok[:, None] & hi_ok[None, :], other=0).to(tl.uint32)
        q = (((lo | (hi << 8)) >> (bit % 8).to(tl.uint32)[None, :]) & ((1 << BITS) - 1)) | 0x4B000000
        q = q.to(tl.float32, bitcast=True) - 8388608.0          # exact, without an int->float conversion
        gi = j // GROUP
        sc = tl.load(s_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        bi = tl.load(b_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        x = tl.load(x_row + j).to(tl.float32)
        acc += (q * sc + bi) * x[None, :]
    tl.store(y_ptr + row.to(tl.int64) * n_out + n, tl.sum(acc, axis=1), mask=n_ok)


def _block_k(n_in: int, group_size: int, bits: int, block_k: int) -> int:
    """Elements per step: at most ``block_k``, a multiple of the group size that divides the row."""
    for k in (4096, 2048, 1024, 512, 256, 128, 64, 32):
        if k <= max(block_k, group_size) and k % group_size == 0 and n_in % k == 0:
            return k
    raise ValueError(f"in_features {n_in} is not a multiple of the group size {group_size}")


def launch_config(n_in: int, rows: int, bits: int = 4, units: bool = False) -> tuple[int, int, int]:
    """(block_n, block_k, num_warps). 2/4/8 bits (the word kernel) and 3/5/6 with the unit kernel, from a sweep of 60
    configurations on the H200 timed inside CUDA graphs (bench/results/cuda_kernels_sweep.json, 4-bit, the 397B
    decode shapes): short rows (the experts' down projection, in = 1024) take 16 output rows per program; longer rows
    4 rows and 2048 inputs per step, one warp for a single row (lm_head, the fused input projections), two for a
    token's experts. 15-20% faster than the previous fixed (8, 1024, 2) on every shape; the unit kernel's tiles have
    the same [block_n, block_k / codes a unit] shape (ptxas for sm_90a: 48-96 registers, no spills but 12 bytes at
    one warp).

    3/5/6 bits with the byte kernel (whose accumulator is a whole [block_n, block_k] tile): 4 rows x 256 inputs on 4
    warps, 72 registers and no spills (the word kernel's tiles spilled 0.3-15 KB a thread there); the H200 timed it
    at 68-100 us for 10 rows of 1024 x 4096 (0.04-0.07 of HBM) in session 8."""
    if bits not in (2, 4, 8) and not units:
        return 4, 256, 4
    if n_in <= 1024:
        return 16, 1024, 2
    return 4, 2048, 1 if rows == 1 else 2


def use_units() -> bool:
    """3/5/6 bits on the unit kernel (the default) rather than the byte kernel (``FMOE_TRITON_UNITS=0``): it matches
    the reference on the H200 and in Triton's interpreter (tests/kernels/test_triton_qmv.py; bench/results/session9/
    call1_verify_report.txt) and timed 0.12-0.21 of HBM there against the byte kernel's 0.04-0.07."""
    return os.environ.get("FMOE_TRITON_UNITS", "1") != "0"


def grouped_qmv(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
                slots: torch.Tensor, bits: int, group_size: int, out: torch.Tensor | None = None,
                block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """``y[r] = dequant(w[slots[r]]) @ x[r]`` for every row r (x: [R, in] or [1, in] shared); float32 [R, out].
    Launch configuration: :func:`launch_config` unless given."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    n_out, n_in, rows = check_operands(x, w, scales, biases, slots, bits, group_size)
    units = bits not in (2, 4, 8) and use_units()
    if block_n is None or block_k is None or num_warps is None:
        cfg = launch_config(n_in, rows, bits, units)
        block_n, block_k, num_warps = block_n or cfg[0], block_k or cfg[1], num_warps or cfg[2]
    x = x.contiguous()
    y = out if out is not None else torch.empty(rows, n_out, dtype=torch.float32, device=x.device)
    block_k = _block_k(n_in, group_size, bits, block_k)
    grid = (triton.cdiv(n_out, block_n), rows)
    stride = 0 if x.shape[0] == 1 else x.stride(0)
    if bits in (2, 4, 8) or units:
        kernel, packed, w_slot_stride = (_qmv_units if units else _qmv_words), w, w.stride(0)
    else:
        kernel, packed, w_slot_stride = _qmv_bytes, w.view(torch.uint8), w.stride(0) * 4
    args = (x, packed, scales, biases, slots, y, n_out, n_in, stride, w_slot_stride, scales.stride(0))
    meta = dict(BITS=bits, GROUP=group_size, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps)
    _launch(kernel, grid, args, meta)
    return y


# compiled kernels by everything Triton specialises a launch on, so that repeated launches (hundreds per decode
# token) skip the JIT's argument binding and cache-key computation (about 25 of its 41 us per launch on the H200).
# A key's first launch goes through the JIT; its second runs both ways and compares the outputs once, so a Triton
# whose launcher takes other arguments falls back to the JIT instead of computing something else.
_COMPILED: dict = {}
_FAST = {"on": os.environ.get("FMOE_TRITON_FAST_LAUNCH", "1") != "0"}


def _launch(kernel, grid, args, meta) -> None:
    if not _FAST["on"] or os.environ.get("TRITON_INTERPRET") == "1" or not args[0].is_cuda:
        kernel[grid](*args, **meta)
        return
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    ints = args[8:]        # what Triton specialises integer arguments on: divisibility by 16, equal to 1
    key = (kernel.fn.__name__, tuple(sorted(meta.items())), args[6], args[7], tuple(a.dtype for a in tensors),
           tuple(a.data_ptr() % 16 == 0 for a in tensors), tuple((i % 16 == 0, i == 1) for i in ints),
           args[0].device.index)
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **meta)           # compiles (or finds) and launches through the JIT
        _COMPILED[key] = [compiled, False]
        return
    compiled, checked = entry
    if not checked and torch.cuda.is_current_stream_capturing():
        kernel[grid](*args, **meta)                      # the one-time check syncs: not inside a CUDA graph capture
        return
    constexprs = (meta["BITS"], meta["GROUP"], meta["BLOCK_N"], meta["BLOCK_K"])
    try:
        stream = torch.cuda.current_stream(args[0].device).cuda_stream
        compiled.run(grid[0], grid[1], 1, stream, compiled.function, compiled.packed_metadata,
                     compiled.launch_metadata(grid, stream, *args, *constexprs), None, None, *args, *constexprs)
    except Exception as e:  # noqa: BLE001 - another Triton's launcher: the JIT path
        warnings.warn(f"direct Triton launch unavailable ({e}); using the JIT launcher")
        _FAST["on"] = False
        kernel[grid](*args, **meta)
        return
    if not checked:
        y = args[5]
        ref = torch.empty_like(y)
        kernel[grid](*args[:5], ref, *args[6:], **meta)
        if not torch.equal(ref, y):
            warnings.warn("direct Triton launch disagreed with the JIT launch; using the JIT launcher")
            _FAST["on"] = False
            y.copy_(ref)
        entry[1] = True
