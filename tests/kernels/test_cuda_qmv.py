"""The CUDA C++ grouped mat-vec (fmoe/kernels/cuda_qmv.cu, built by NVRTC) against the reference dequantize + matmul:
bit widths 2/4/8, groups 32/64/128, bf16 and float32 activations and scales, one x shared by every row, gate and up in
one pass, partial warps and blocks, slots at a stride. Runs where a GPU exists (the H200 through the device tool: its
output is committed under bench/results/); the composition of grouped_gate_up from two mat-vecs runs everywhere."""
import numpy as np
import pytest
import torch

from fmoe.kernels.quant import bf16_to_f32, dequantize, quantize

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="no GPU")


def _table(bits, group, n_out, n_in, slots=3, seed=0, scale_dtype=torch.bfloat16, device="cuda"):
    rng = np.random.default_rng(seed)
    qs = [quantize(rng.standard_normal((n_out, n_in)).astype(np.float32), bits, group) for _ in range(slots)]

    def conv(a):
        if scale_dtype == torch.bfloat16:
            return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(bf16_to_f32(a) if a.dtype == np.uint16 else a.astype(np.float32))

    w = torch.from_numpy(np.stack([q.weight.view(np.int32) for q in qs])).to(device)
    s = torch.stack([conv(q.scales) for q in qs]).to(device)
    b = torch.stack([conv(q.biases) for q in qs]).to(device)
    return w, s, b, np.stack([dequantize(q) for q in qs])


def _close(y, ref, tol=1e-3):
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * np.abs(ref).max())


@needs_gpu
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_matches_dequantize_matmul(bits, group, x_dtype):
    from fmoe.kernels import cuda_qmv

    n_out, n_in = 1000, 4096                   # 1000 rows: the last block and warp are partial
    w, s, b, dense = _table(bits, group, n_out, n_in)
    assert cuda_qmv.supports(torch.zeros(1, n_in, device="cuda"), w, s, bits, group)
    x = torch.randn(4, n_in, device="cuda").to(x_dtype)
    xf = x.float().cpu().numpy()
    slots = torch.tensor([2, 0, 2, 1], dtype=torch.int32, device="cuda")
    idx = slots.cpu().numpy()
    for kernel in (None, "fma") if bits == 4 else (None,):          # 4 bits: tensor cores by default, and FMA
        _close(cuda_qmv.grouped_qmv(x, w, s, b, slots, bits, group, kernel=kernel).cpu().numpy(),
               np.einsum("roi,ri->ro", dense[idx], xf))
        shared = cuda_qmv.grouped_qmv(x[:1], w, s, b, slots, bits, group, kernel=kernel).cpu().numpy()
        _close(shared, np.einsum("roi,i->ro", dense[idx], xf[0]))


@needs_gpu
@pytest.mark.parametrize("n_in", [1024, 1536, 3072])         # 4-bit: 32, 48 and 96 chunks (partial lanes)
def test_rows_that_leave_lanes_idle(n_in):
    from fmoe.kernels import cuda_qmv

    w, s, b, dense = _table(4, 64, 257, n_in, scale_dtype=torch.float32)
    x = torch.randn(3, n_in, device="cuda")
    slots = torch.tensor([1, 1, 0], dtype=torch.int32, device="cuda")
    ref = np.einsum("roi,ri->ro", dense[slots.cpu().numpy()], x.cpu().numpy())
    for rpw in (1, 4):
        for warps in (1, 8):
            for nb in (1, 4):
                y = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, config=(rpw, warps, nb))
                _close(y.cpu().numpy(), ref)


@needs_gpu
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gate_up_in_one_pass(bits):
    from fmoe.kernels import cuda_qmv

    wg, sg, bg, dg = _table(bits, 64, 1024, 2048, seed=1)
    wu, su, bu, du = _table(bits, 64, 1024, 2048, seed=2)
    x = torch.randn(1, 2048, device="cuda").to(torch.bfloat16)
    slots = torch.tensor([0, 2, 1], dtype=torch.int32, device="cuda")
    idx, xf = slots.cpu().numpy(), x.float().cpu().numpy()[0]
    g, u = np.einsum("roi,i->ro", dg[idx], xf), np.einsum("roi,i->ro", du[idx], xf)
    with np.errstate(over="ignore"):
        ref = g / (1 + np.exp(-g)) * u
    for cfg in ((1, 8, 2), (2, 4, 1), (1, 4, 4)):
        h = cuda_qmv.grouped_gate_up(x, wg, sg, bg, wu, su, bu, slots, bits, 64, config=cfg)
        _close(h.cpu().numpy(), ref)


def _check_one_matrix(kernel, n_in, group, n_out, supported):
    """4-bit kernel ``kernel`` against the reference on 3 rows of slots [2, 0, 2]: bf16 and float32 scales, bf16
    (within 1e-4) and float32 activations spanning 1e-2..1e2 (within 2e-4), one x per row and one shared; asserts
    ``supported(x, w, s, b)`` first. Returns (slots, their numpy copy)."""
    from fmoe.kernels import cuda_qmv

    slots = torch.tensor([2, 0, 2], dtype=torch.int32, device="cuda")
    idx = slots.cpu().numpy()
    for scale_dtype in (torch.bfloat16, torch.float32):
        w, s, b, dense = _table(4, group, n_out, n_in, scale_dtype=scale_dtype, seed=n_in + group)
        for x_dtype, tol in ((torch.bfloat16, 1e-4), (torch.float32, 2e-4)):
            x = (torch.randn(3, n_in, device="cuda") * torch.logspace(-2, 2, n_in, device="cuda")).to(x_dtype)
            assert supported(x, w, s, b)
            xf = x.float().cpu().numpy()
            _close(cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel=kernel).cpu().numpy(),
                   np.einsum("roi,ri->ro", dense[idx], xf), tol)
            _close(cuda_qmv.grouped_qmv(x[1:2], w, s, b, slots, 4, group, kernel=kernel).cpu().numpy(),
                   np.einsum("roi,i->ro", dense[idx], xf[1]), tol)
    return slots, idx


@needs_gpu
@pytest.mark.parametrize("n_in", [512, 1024, 2048, 4096])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("variant", ["mma-k256", "mma-b3"])
def test_tensor_core_kernel_matches_the_reference(n_in, group, variant):
    """fmoe_qmv4_mma (4-bit on mma.sync): 200 rows (a partial 16-row tile and block), one to sixteen warps per tile,
    bf16 and float32 scales and activations, one x per row and one shared, gate and up in one pass. float32
    activations go in as two bf16 (hi + lo): within 2e-4 of the reference, where bf16 alone would be ~1e-3 off."""
    from fmoe.kernels import cuda_qmv

    kernel = variant

    n_out = 200
    slots, idx = _check_one_matrix(kernel, n_in, group, n_out, lambda x, w, s, b: cuda_qmv.supports_mma(x, w, group, 4))
    w, s, b, dense = _table(4, group, n_out, n_in, seed=6)
    wu, su, bu, du = _table(4, group, n_out, n_in, seed=7)
    x = torch.randn(1, n_in, device="cuda").to(torch.bfloat16)
    xf = x.float().cpu().numpy()[0]
    gt, ut = np.einsum("roi,i->ro", dense[idx], xf), np.einsum("roi,i->ro", du[idx], xf)
    with np.errstate(over="ignore"):
        ref = gt / (1 + np.exp(-gt)) * ut
    _close(cuda_qmv.grouped_gate_up(x, w, s, b, wu, su, bu, slots, 4, group, kernel=kernel).cpu().numpy(), ref, 1e-4)


needs_hopper = pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() < (9, 0),
                                  reason="no GPU of compute capability 9.0+ (bulk copies)")


@needs_hopper
@pytest.mark.parametrize("n_in", [512, 1024, 2048, 4096])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_bulk_copy_kernel_matches_the_reference(n_in, group):
    """fmoe_qmv4_bulk (weights streamed into shared memory by bulk copies, tensor cores) against the reference: every
    group size and input count (16 to 128 rows a stage), bf16 and float32 scales and activations, one x per row and
    one shared; 256 rows x 3 table rows are at most 24 stages, one a block on the H200 (refills and blocks that cross
    table rows: the next test)."""
    from fmoe.kernels import cuda_qmv

    _check_one_matrix("bulk", n_in, group, 256, lambda x, w, s, b: cuda_qmv.supports_bulk(x, w, s, b, group, 4))


@needs_hopper
def test_bulk_copy_kernel_keeps_the_int16_contract_with_outliers():
    """x quantized per group as two int8 digits: each value within 1 / 65278 of its group's largest |x|, the CPU
    kernel's int16 contract. A few values 500x the rest (as down-projection inputs have) cost the small ones their
    precision: within 1e-3 of max |y| (the CPU kernel's tolerance), exactly W x^ for the quantized x^; a group of
    zeros, one of 1e-35 (counts as zero) and a NaN (its row all NaN, never a silently finite result)."""
    from fmoe.kernels import cuda_qmv

    n_out, n_in = 1024, 4096
    for group in (32, 64, 128):
        w, s, b, dense = _table(4, group, n_out, n_in, slots=2, seed=group)
        x = torch.randn(3, n_in, device="cuda")
        x[:, ::97] *= 500.0
        x[1, :group] = 0.0
        x[1, group:2 * group] = 1e-35
        slots = torch.tensor([0, 1, 0], dtype=torch.int32, device="cuda")
        ref = np.einsum("roi,ri->ro", dense[slots.cpu().numpy()], x.cpu().numpy().astype(np.float64))
        _close(cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="bulk").cpu().numpy(), ref, 1e-3)
        x[2, 5] = float("nan")
        y = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="bulk").cpu()
        assert torch.isnan(y[2]).all() and torch.isfinite(y[:2]).all()


@needs_hopper
def test_bulk_copy_kernel_refills_its_stages(monkeypatch):
    """More stages a block than buffers (64 rows: ~15 stages a block at 1024 x 4096, ~31 at 4096 x 1024, with two
    buffers), so buffers are refilled many times and blocks cross from one table row to the next (restaging x); the
    397B shapes at the decode's 10 rows; float32 and bf16 activations, one x per row; then groups 32 and 128 with
    float32 scales and one shared x. Against the FMA kernel."""
    from fmoe.kernels import cuda_qmv

    for n_out, n_in, rows in ((1024, 4096, 64), (1024, 4096, 10), (4096, 1024, 10), (4096, 1024, 64)):
        w, s, b, _ = _table(4, 64, n_out, n_in, slots=8, seed=n_out + rows)
        slots = torch.randint(0, 8, (rows,), dtype=torch.int32, device="cuda")
        for x in (torch.randn(rows, n_in, device="cuda"), torch.randn(rows, n_in, device="cuda").bfloat16()):
            ref = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, kernel="fma").cpu().numpy()
            for stages in (cuda_qmv.BULK_STAGES, None):
                monkeypatch.setattr(cuda_qmv, "BULK_STAGES", stages)
                _close(cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, kernel="bulk").cpu().numpy(), ref, 2e-4)
    monkeypatch.setattr(cuda_qmv, "BULK_STAGES", 2)
    for group in (32, 128):
        w, s, b, _ = _table(4, group, 1024, 4096, slots=8, seed=group, scale_dtype=torch.float32)
        slots = torch.randint(0, 8, (64,), dtype=torch.int32, device="cuda")
        x = torch.randn(1, 4096, device="cuda").bfloat16()
        ref = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="fma").cpu().numpy()
        _close(cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="bulk").cpu().numpy(), ref, 2e-4)


@needs_hopper
def test_whole_rows_kernel_refills_spans_table_rows_and_falls_back(monkeypatch):
    """The whole-rows kernel (the down projection's default) where the launch-mode and refill tests do not go: refills
    (more units a block than buffers) with groups of 32 and 128 and float32 scales; a block's units over 3 table rows
    of x (200 rows of 4096 x 1024, bf16 x); K = 512 with refills (at most 4 buffers); and 600 rows of 128 x 512, whose
    blocks would span 6 table rows of x, where the launcher keeps the split kernel. Against the FMA kernel."""
    from fmoe.kernels import cuda_qmv

    def check(n_out, n_in, rows, group, scale_dtype=torch.bfloat16, x_dtype=torch.float32, whole=4):
        w, s, b, _ = _table(4, group, n_out, n_in, slots=8, seed=rows + group, scale_dtype=scale_dtype)
        slots = torch.randint(0, 8, (rows,), dtype=torch.int32, device="cuda")
        x = torch.randn(rows, n_in, device="cuda").to(x_dtype)
        assert cuda_qmv._whole_rows(x, s, n_out, n_in, rows, group, False, x.device.index or 0) == whole
        ref = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="fma").cpu().numpy()
        _close(cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="bulk").cpu().numpy(), ref, 2e-4)

    monkeypatch.setattr(cuda_qmv, "BULK_PRODUCER", True)
    monkeypatch.setattr(cuda_qmv, "BULK_WHOLE_ROWS", 4)
    for group in (32, 128):
        check(4096, 1024, 64, group, scale_dtype=torch.float32)
    check(4096, 1024, 200, 64, x_dtype=torch.bfloat16)
    monkeypatch.setattr(cuda_qmv, "BULK_WHOLE_STAGES", 4)
    check(128, 512, 400, 64)
    check(128, 512, 600, 64, whole=0)


@needs_hopper
def test_bulk_copy_gate_up_matches_the_fma_kernel():
    """fmoe_qmv4_bulk's gate+up mode (a stage's gate rows, then its up rows, in one block; silu(g) * u): the 397B
    expert shape at decode's 10 rows and 64 (many stages a block, blocks crossing table rows), one shared bf16 x and
    one float32 x per row, groups 32/64/128, bf16 and float32 scales; 512 inputs (128-row stages). Against the FMA
    kernel's gate+up."""
    from fmoe.kernels import cuda_qmv

    for n_out, n_in, rows, group, scale_dtype in ((1024, 4096, 10, 64, torch.bfloat16), (1024, 4096, 64, 32,
                                                  torch.float32), (1024, 4096, 10, 128, torch.bfloat16),
                                                 (256, 512, 12, 64, torch.float32)):
        (wg, sg, bg, _), (wu, su, bu, _) = (_table(4, group, n_out, n_in, slots=4, seed=seed, scale_dtype=scale_dtype)
                                            for seed in (rows, rows + 1))
        slots = torch.randint(0, 4, (rows,), dtype=torch.int32, device="cuda")
        for x in (torch.randn(1, n_in, device="cuda").bfloat16(), torch.randn(rows, n_in, device="cuda")):
            assert cuda_qmv.supports_bulk(x, wg, sg, bg, group, 4)
            ref = cuda_qmv.grouped_gate_up(x, wg, sg, bg, wu, su, bu, slots, 4, group, kernel="fma").cpu().numpy()
            got = cuda_qmv.grouped_gate_up(x, wg, sg, bg, wu, su, bu, slots, 4, group, kernel="bulk").cpu().numpy()
            _close(got, ref, 2e-4)


# (cuda_qmv settings, slots_ready): launched to overlap the previous launch or not, the slot table vouched for; the
# copies issued by the producer warp (the default) or thread 0; one matrix of 512/1024 inputs by whole rows a warp (the
# default, units of 4 tiles) or with a tile's inputs split over warps
_BULK_MODES = {"no overlap": ({"BULK_OVERLAP": False}, False),
               "overlap": ({}, False),
               "overlap, slots ready": ({}, True),
               "linear scales (no swizzled tensor copies)": ({"BULK_SWIZZLE": False}, True),
               "thread 0 issues the copies, no overlap": ({"BULK_PRODUCER": False, "BULK_OVERLAP": False}, False),
               "thread 0 issues the copies, slots ready": ({"BULK_PRODUCER": False}, True),
               "thread 0, 1 tile a warp, 4 stages, slots ready": (
                   {"BULK_PRODUCER": False, "BULK_TILES_PER_WARP": 1, "BULK_STAGES": 4}, True),
               "inputs split over warps, slots ready": ({"BULK_WHOLE_ROWS": 0}, True),
               "inputs split over warps, every stage that fits": ({"BULK_WHOLE_ROWS": 0, "BULK_STAGES": None}, False),
               "whole rows, units of 1 tile, slots ready": ({"BULK_WHOLE_ROWS": 1}, True),
               "whole rows, units of 2 tiles, at most 8 stages": (
                   {"BULK_WHOLE_ROWS": 2, "BULK_WHOLE_STAGES": 8}, False),
               "whole rows, units of 8 tiles, slots ready": ({"BULK_WHOLE_ROWS": 8}, True),
               "whole rows, units of 8 tiles, no overlap": ({"BULK_WHOLE_ROWS": 8, "BULK_OVERLAP": False}, False)}


@needs_hopper
@pytest.mark.parametrize("mode", sorted(_BULK_MODES))
def test_bulk_copy_kernel_launch_modes_match_the_fma_kernel(mode, monkeypatch):
    """The bulk-copy kernel launched as the engine may launch it (overlapping the stream's previous kernel or not;
    slots_ready: its slots and first copies before the wait for that kernel; one or two tiles a warp; scales by
    swizzled tensor copies or linear; copies issued by a producer warp, the default, or thread 0; whole rows a warp
    or a tile's inputs over several warps) against the FMA
    kernel, each launch right after an FMA launch on the same
    stream that writes its x into a buffer of NaNs (x read before that launch finished would show): the 397B shapes
    at 10 and 64 rows (1024 x 4096 as views of padded tables, slots further apart than a matrix, as the engine's VRAM
    pool has them), one x per row and one shared, gate+up at 10 rows; 128 x 512 at 400 rows."""
    from fmoe.kernels import cuda_qmv

    settings, ready = _BULK_MODES[mode]
    for k, v in settings.items():
        monkeypatch.setattr(cuda_qmv, k, v)

    def padded(t):                          # the same values in a table whose slots are 16 rows further apart
        big = torch.zeros(t.shape[0], t.shape[1] + 16, *t.shape[2:], dtype=t.dtype, device=t.device)
        big[:, :t.shape[1]] = t
        return big[:, :t.shape[1]]

    for n_out, n_in, row_counts in ((1024, 4096, (10, 64)), (4096, 1024, (10, 64)), (128, 512, (400,))):
        (w, s, b, _), (wu, su, bu, _) = (_table(4, 64, n_out, n_in, slots=4, seed=seed) for seed in (n_out, n_in))
        if n_in == 4096:
            w, s, b, wu, su, bu = map(padded, (w, s, b, wu, su, bu))
            assert cuda_qmv._swizzled(s, n_in, 64) == cuda_qmv.BULK_SWIZZLE and s.stride(0) > n_out * s.shape[2]
        wx, sx, bx, _ = _table(4, 64, n_in, 256, slots=4, seed=3)          # makes x: [R, 256] -> [R, n_in]
        for rows in row_counts:
            slots = torch.randint(0, 4, (rows,), dtype=torch.int32, device="cuda")
            for shared in (False, True):
                x_in = torch.randn(1 if shared else rows, 256, device="cuda")
                x_slots = slots[:1] if shared else slots

                def fresh_x():
                    nan = torch.full((x_in.shape[0], n_in), float("nan"), device="cuda")
                    return cuda_qmv.grouped_qmv(x_in, wx, sx, bx, x_slots, 4, 64, kernel="fma", out=nan)

                x = fresh_x()
                ref = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, kernel="fma").cpu().numpy()
                got = cuda_qmv.grouped_qmv(fresh_x(), w, s, b, slots, 4, 64, kernel="bulk", slots_ready=ready)
                _close(got.cpu().numpy(), ref, 2e-4)
                if rows == 10:
                    ref = cuda_qmv.grouped_gate_up(x, w, s, b, wu, su, bu, slots, 4, 64, kernel="fma").cpu().numpy()
                    got = cuda_qmv.grouped_gate_up(fresh_x(), w, s, b, wu, su, bu, slots, 4, 64, kernel="bulk",
                                                   slots_ready=ready)
                    _close(got.cpu().numpy(), ref, 2e-4)


@needs_gpu
def test_tensor_core_and_fma_kernels_agree_on_the_397b_shapes():
    """Every variant of the tensor-core kernel against the FMA kernel: the 397B expert shapes, and 200 x 2048 (a
    partial tile) at groups 64, 32 and 128, float32 and bf16 activations, and gate+up."""
    from fmoe.kernels import cuda_qmv

    for n_out, n_in in ((1024, 4096), (4096, 1024), (200, 2048)):
        w, s, b, _ = _table(4, 64, n_out, n_in, slots=4, seed=n_out)
        x = torch.randn(10, n_in, device="cuda")
        slots = torch.tensor([3, 1, 0, 2, 1, 3, 0, 0, 2, 1], dtype=torch.int32, device="cuda")
        fma = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, kernel="fma")
        for variant in cuda_qmv.MMA_VARIANTS:
            tc = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, kernel=variant)
            _close(tc.cpu().numpy(), fma.cpu().numpy(), 2e-4)
            xb = x.bfloat16()
            tb = cuda_qmv.grouped_qmv(xb, w, s, b, slots, 4, 64, kernel=variant)
            _close(tb.cpu().numpy(), cuda_qmv.grouped_qmv(xb, w, s, b, slots, 4, 64, kernel="fma").cpu().numpy(), 2e-4)
    for group in (32, 128):          # per-warp staging: each warp's region 16-byte aligned at every group size
        w, s, b, _ = _table(4, group, 200, 2048, slots=4, seed=group)
        x = torch.randn(3, 2048, device="cuda")
        slots = torch.tensor([3, 1, 0], dtype=torch.int32, device="cuda")
        fma = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="fma").cpu().numpy()
        for variant in cuda_qmv.MMA_VARIANTS:
            for xv in (x, x.bfloat16()):
                ref = fma if xv.dtype == torch.float32 else \
                    cuda_qmv.grouped_qmv(xv, w, s, b, slots, 4, group, kernel="fma").cpu().numpy()
                _close(cuda_qmv.grouped_qmv(xv, w, s, b, slots, 4, group, kernel=variant).cpu().numpy(), ref, 2e-4)
    wg, sg, bg, dg = _table(4, 64, 1024, 4096, seed=3)
    wu, su, bu, du = _table(4, 64, 1024, 4096, seed=4)
    x = torch.randn(1, 4096, device="cuda").to(torch.bfloat16)
    slots = torch.tensor([0, 2, 1], dtype=torch.int32, device="cuda")
    ref = cuda_qmv.grouped_gate_up(x, wg, sg, bg, wu, su, bu, slots, 4, 64, kernel="fma").cpu().numpy()
    for variant in cuda_qmv.MMA_VARIANTS:
        h = cuda_qmv.grouped_gate_up(x, wg, sg, bg, wu, su, bu, slots, 4, 64, kernel=variant)
        _close(h.cpu().numpy(), ref, 2e-4)


@needs_gpu
def test_slots_inside_expert_regions_and_the_front_dispatch():
    """Gate, up, down of each slot in one byte region (the VRAM tier's layout): the front (grouped_qmv.py) takes the
    CUDA kernel, and agrees with the torch reference; 3-bit goes to the Triton kernel."""
    from fmoe.kernels import grouped_qmv as front

    S, n_out, n_in = 4, 512, 2048
    tables = [_table(4, 64, n_out, n_in, slots=S, seed=k) for k in range(2)]
    arrays = [t for tab in tables for t in tab[:3]]
    offs, off = [], 128
    for t in arrays:
        offs.append(off)
        off += t[0].numel() * t.element_size() + 256
    region = torch.zeros((S, off), dtype=torch.uint8, device="cuda")
    views = []
    for t, o in zip(arrays, offs):
        v = region[:, o:o + t[0].numel() * t.element_size()].view(t.dtype).view(S, *t.shape[1:])
        v.copy_(t)
        views.append(v)
    x = torch.randn(1, n_in, device="cuda", dtype=torch.bfloat16)
    slots = torch.tensor([3, 1, 0], dtype=torch.int32, device="cuda")
    ref = front.grouped_qmv_torch(x, *views[:3], slots, 4, 64)
    _close(front.grouped_qmv(x, *views[:3], slots, 4, 64).cpu().numpy(), ref.cpu().numpy())
    h = front.grouped_gate_up(x, views[:3], views[3:], slots, 4, 64)
    hr = torch.nn.functional.silu(ref) * front.grouped_qmv_torch(x, *views[3:], slots, 4, 64)
    _close(h.cpu().numpy(), hr.cpu().numpy())
    w3, s3, b3, d3 = _table(3, 64, 256, 1024)
    y3 = front.grouped_qmv(x[:, :1024].float(), w3, s3, b3, slots[:2] % 3, 3, 64)
    _close(y3.cpu().numpy(), np.einsum("roi,i->ro", d3[(slots[:2] % 3).cpu().numpy()], x[0, :1024].float().cpu().numpy()))


@needs_gpu
def test_a_kernel_that_cannot_be_built_is_a_warning_and_the_triton_path(monkeypatch):
    from fmoe.kernels import cuda_qmv, grouped_qmv as front
    from fmoe.kernels.nvrtc import NvrtcError

    def broken(*a, **k):
        raise NvrtcError("NVRTC (libnvrtc) not found: test")

    monkeypatch.setattr(cuda_qmv._PROGRAM, "function", broken)
    monkeypatch.setattr(front, "_BROKEN", [])
    w, s, b, dense = _table(4, 64, 256, 1024)
    x = torch.randn(1, 1024, device="cuda")
    slots = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    with pytest.warns(UserWarning, match="Triton kernel instead"):
        y = front.grouped_qmv(x, w, s, b, slots, 4, 64)
    _close(y.cpu().numpy(), np.einsum("roi,i->ro", dense[[0, 1]], x[0].cpu().numpy()))


@needs_gpu
def test_captured_in_a_cuda_graph():
    from fmoe.kernels import cuda_qmv

    w, s, b, dense = _table(4, 64, 512, 1024)
    x = torch.randn(1, 1024, device="cuda")
    slots = torch.tensor([2, 0], dtype=torch.int32, device="cuda")
    y = torch.empty(2, 512, device="cuda")
    cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, out=y)          # built before capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, out=y)
    x.copy_(torch.randn(1, 1024, device="cuda"))
    slots.copy_(torch.tensor([1, 1], dtype=torch.int32, device="cuda"))
    g.replay()
    torch.cuda.synchronize()
    _close(y.cpu().numpy(), np.einsum("roi,i->ro", dense[[1, 1]], x[0].cpu().numpy()))


def test_gate_up_composition_matches_the_reference_on_any_device():
    """Where no CUDA kernel runs (here: CPU tensors), grouped_gate_up is silu(gate mat-vec) * (up mat-vec)."""
    from fmoe.kernels import grouped_qmv as front

    gate, up = _table(4, 64, 96, 256, seed=3, device="cpu"), _table(4, 64, 96, 256, seed=4, device="cpu")
    x = torch.randn(1, 256)
    slots = torch.tensor([1, 0], dtype=torch.int32)
    h = front.grouped_gate_up(x, gate[:3], up[:3], slots, 4, 64).numpy()
    xf = x[0].numpy()
    g, u = np.einsum("roi,i->ro", gate[3][[1, 0]], xf), np.einsum("roi,i->ro", up[3][[1, 0]], xf)
    _close(h, g / (1 + np.exp(-g)) * u, tol=1e-4)


def test_every_configuration_compiles_with_nvrtc():
    """The kernel source builds under NVRTC for Hopper and Ampere in every instance the launcher asks for on the 397B
    shapes (no GPU needed: NVRTC only compiles); skipped where NVRTC is missing (torch's CPU wheel)."""
    from fmoe.kernels import cuda_qmv, nvrtc

    try:
        nvrtc.nvrtc_version()
    except nvrtc.NvrtcError as e:
        pytest.skip(str(e))
    for bits in (2, 4, 8):
        for n_in, gate_up in ((4096, True), (4096, False), (1024, False)):
            rpw, _, nb = cuda_qmv.launch_config(n_in, bits, 10, gate_up)
            per_lane = -(-(n_in * bits // 128) // 32)
            for x_t, s_t in ((1, 1), (0, 0)):
                expr = f"fmoe_qmv<{bits}, 64, {x_t}, {s_t}, {rpw}, {per_lane}, {int(gate_up)}, {nb}>"
                for arch in ("sm_90", "sm_80"):
                    cubin, name = nvrtc.compile_cubin(cuda_qmv._PROGRAM.source, expr, arch)
                    assert cubin[:4] == b"\x7fELF" and name.startswith("_Z8fmoe_qmv")
    for group in (32, 64, 128):                     # the tensor-core kernel: 1 to 16 warps per tile, its variants
        for mode, n_in in ((0, 512), (0, 1024), (1, 2048), (0, 4096)):
            for ks, ws, minb in cuda_qmv.MMA_VARIANTS.values():
                expr = f"fmoe_qmv4_mma<{group}, {mode}, {1 - mode}, {mode}, {n_in // ks}, {ks}, {ws}, {minb}>"
                cubin, name = nvrtc.compile_cubin(cuda_qmv._PROGRAM.source, expr, "sm_80")
                assert cubin[:4] == b"\x7fELF" and "fmoe_qmv4_mma" in name
    for group in (32, 64, 128):                     # the bulk-copy kernel (Hopper): 128 and 256 inputs a warp
        for x_t, s_t, kw, tpw, mode, trace, swz, prod in ((1, 1, 256, 2, 0, 0, 1, 0), (0, 0, 128, 1, 0, 0, 0, 0),
                                                          (1, 1, 256, 2, 1, 0, 1, 0), (1, 1, 256, 1, 1, 1, 0, 1),
                                                          (0, 1, 128, 2, 0, 1, 0, 1), (1, 1, 256, 2, 1, 0, 0, 0),
                                                          (0, 1, 1024, 4, 0, 0, 0, 2), (1, 1, 512, 2, 0, 1, 0, 2),
                                                          (1, 0, 512, 8, 0, 1, 0, 2)):
            expr = f"fmoe_qmv4_bulk<{group}, {x_t}, {s_t}, {kw}, {tpw}, {mode}, {trace}, {swz}, {prod}>"
            cubin, name = nvrtc.compile_cubin(cuda_qmv._PROGRAM.source, expr, "sm_90")
            assert cubin[:4] == b"\x7fELF" and "fmoe_qmv4_bulk" in name


def test_a_kernel_name_that_cannot_run_is_an_error_that_says_why():
    """No GPU needed: the name is checked before anything touches a device."""
    from fmoe.kernels import cuda_qmv

    w, s, b, _ = _table(2, 64, 32, 512, device="cpu")
    slots = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="one of 'fma'"):
        cuda_qmv.grouped_qmv(torch.zeros(1, 512), w, s, b, slots, 2, 64, kernel="fast")
    with pytest.raises(ValueError, match="needs 4 bits.*got 2 bits"):
        cuda_qmv.grouped_qmv(torch.zeros(1, 512), w, s, b, slots, 2, 64, kernel="mma-b3")
    with pytest.raises(ValueError, match="kernel='bulk': no FMA config, 4 bits.*got 2 bits, group 64, 512 inputs, "
                                         "32 outputs"):
        cuda_qmv.grouped_qmv(torch.zeros(1, 512), w, s, b, slots, 2, 64, kernel="bulk")
    with pytest.raises(ValueError, match="kernel='bulk': no FMA config, 4 bits"):
        cuda_qmv.grouped_gate_up(torch.zeros(1, 512), w, s, b, w, s, b, slots, 2, 64, kernel="bulk")


@pytest.mark.parametrize("var", ["FMOE_CUDA_QMV4", "FMOE_CUDA_GATE_UP"])
def test_the_kernels_are_chosen_by_environment_variables(monkeypatch, var):
    """FMOE_CUDA_QMV4 names the one-matrix 4-bit kernel, FMOE_CUDA_GATE_UP the gate+up one, "bulk" by default (no GPU
    needed: only the names are read)."""
    from fmoe.kernels import cuda_qmv

    for name, chosen in (("mma-b3", "mma-b3"), ("mma-k256", "mma-k256"), ("bulk", "bulk"), ("fma", None)):
        monkeypatch.setenv(var, name)
        assert cuda_qmv._kernel_from_env(var) == chosen
    monkeypatch.delenv(var)
    assert cuda_qmv._kernel_from_env(var) == "bulk"
    monkeypatch.setenv(var, "fastest")
    with pytest.raises(ValueError, match=f"{var}='fastest': one of 'fma', 'bulk', 'mma-b3'"):
        cuda_qmv._kernel_from_env(var)


def test_whole_rows_kernel_is_chosen_only_where_it_fits(monkeypatch):
    """The launcher's choice of the whole-rows kernel (no GPU needed: the GPU's resources are stubbed, operands are
    CPU tensors whose shapes and dtypes are all it reads): one matrix of 512/1024 inputs with the producer warp; a
    block's units over at most 4 table rows of x (any count with one shared x); its buffers in shared memory (one a
    unit of a block where they fit, else a multiple of its warp groups), else the split kernel (0)."""
    from fmoe.kernels import cuda_qmv

    monkeypatch.setattr(cuda_qmv, "BULK_PRODUCER", True)
    monkeypatch.setattr(cuda_qmv, "BULK_WHOLE_ROWS", 4)
    monkeypatch.setattr(cuda_qmv, "BULK_WHOLE_STAGES", None)
    scales = torch.zeros(1, 4096, 16, dtype=torch.bfloat16)

    def choice(n_out, n_in, rows, shared=False, gate_up=False):
        x = torch.zeros(1 if shared else rows, n_in)
        return cuda_qmv._whole_rows(x, scales, n_out, n_in, rows, 64, gate_up, 0)

    monkeypatch.setattr(cuda_qmv, "_sm_resources", lambda device: (132, 232448))      # an H200
    assert choice(4096, 1024, 10) == 4 and choice(4096, 1024, 64) == 4 and choice(4096, 1024, 1) == 4
    assert choice(1024, 4096, 10) == 0 and choice(4096, 1024, 10, gate_up=True) == 0
    assert choice(128, 512, 400) == 4                           # 7 units a block, 2 a table row: 4 rows of x
    assert choice(128, 512, 600) == 0 and choice(128, 512, 600, shared=True) == 4      # 6 rows of x; one x
    # buffers: 5 units a block at decode, all in flight; 32 at 64 rows, 4 buffers (a multiple of 4 warp groups)
    assert cuda_qmv._bulk_stages(scales, 4096, 1024, 10, 64, 0, cuda_qmv._BULK_STATIC_SMEM, whole=4) == 5
    assert cuda_qmv._bulk_stages(scales, 4096, 1024, 64, 64, 0, cuda_qmv._BULK_STATIC_SMEM, whole=4) == 4
    monkeypatch.setattr(cuda_qmv, "_sm_resources", lambda device: (132, 101376))      # 99 KB a block
    assert choice(4096, 1024, 10) == 0                          # 2 buffers fit, 5 units need 4: the split kernel
    assert choice(4096, 1024, 1) == 4                           # one unit a block: one buffer
    monkeypatch.setattr(cuda_qmv, "BULK_PRODUCER", False)
    monkeypatch.setattr(cuda_qmv, "_sm_resources", lambda device: (132, 232448))
    assert choice(4096, 1024, 10) == 0


def test_whole_rows_tiles_are_read_from_the_environment(monkeypatch):
    """FMOE_CUDA_WHOLE_ROWS: the whole-rows kernel's tiles a unit, "0" (off), 1, 2, 4 (the default) or 8; anything
    else is an error naming the variable (no GPU needed)."""
    from fmoe.kernels import cuda_qmv

    monkeypatch.delenv("FMOE_CUDA_WHOLE_ROWS", raising=False)
    assert cuda_qmv._tiles_from_env("FMOE_CUDA_WHOLE_ROWS") == 4
    for value in ("0", "1", "2", "4", "8"):
        monkeypatch.setenv("FMOE_CUDA_WHOLE_ROWS", value)
        assert cuda_qmv._tiles_from_env("FMOE_CUDA_WHOLE_ROWS") == int(value)
    for value in ("3", "16", "on"):
        monkeypatch.setenv("FMOE_CUDA_WHOLE_ROWS", value)
        with pytest.raises(ValueError, match=f"FMOE_CUDA_WHOLE_ROWS='{value}': '0' \\(off\\)"):
            cuda_qmv._tiles_from_env("FMOE_CUDA_WHOLE_ROWS")


@pytest.mark.parametrize("var", ["FMOE_CUDA_OVERLAP", "FMOE_CUDA_PRODUCER"])
def test_bulk_kernel_switches_are_read_from_the_environment(monkeypatch, var):
    """FMOE_CUDA_OVERLAP (the bulk-copy kernel's launches overlap the previous kernel) and FMOE_CUDA_PRODUCER (a
    producer warp issues its copies), both on by default: "1" or "0"; anything else is an error naming the variable
    (no GPU needed)."""
    from fmoe.kernels import cuda_qmv

    monkeypatch.delenv(var, raising=False)
    assert cuda_qmv._switch_from_env(var) is True
    for value in ("0", "1"):
        monkeypatch.setenv(var, value)
        assert cuda_qmv._switch_from_env(var) is (value == "1")
    monkeypatch.setenv(var, "off")
    with pytest.raises(ValueError, match=f"{var}='off': '1'"):
        cuda_qmv._switch_from_env(var)


def test_no_rows_is_an_empty_result_without_a_launch():
    """An empty slot table gives [0, out] (a launch of zero blocks would be a driver error); no GPU needed."""
    from fmoe.kernels import cuda_qmv

    w, s, b, _ = _table(4, 64, 32, 512, device="cpu")
    none = torch.zeros(0, dtype=torch.int32)
    for kernel in (None, "fma", "bulk"):
        assert cuda_qmv.grouped_qmv(torch.zeros(1, 512), w, s, b, none, 4, 64, kernel=kernel).shape == (0, 32)
    assert cuda_qmv.grouped_gate_up(torch.zeros(1, 512), w, s, b, w, s, b, none, 4, 64).shape == (0, 32)
    with pytest.raises(ValueError, match="kernel='fast': one of 'fma', 'bulk'"):
        cuda_qmv.grouped_qmv(torch.zeros(1, 512), w, s, b, none, 4, 64, kernel="fast")


def test_bad_operands_are_errors_that_name_them():
    """fmoe/kernels/slot_table.py, the checks both GPU kernels run before a launch (no GPU needed)."""
    from fmoe.kernels.slot_table import check_operands

    w, s, b, _ = _table(4, 64, 32, 256, device="cpu")
    slots = torch.tensor([0, 2], dtype=torch.int32)
    assert check_operands(torch.zeros(2, 256), w, s, b, slots, 4, 64) == (32, 256, 2)
    assert check_operands(torch.zeros(1, 256), w, s, b, slots, 4, 64) == (32, 256, 2)
    for x, args, match in (
        (torch.zeros(3, 256), (w, s, b, slots), "does not match 2 rows"),
        (torch.zeros(2, 128), (w, s, b, slots), "in_features 256"),
        (torch.zeros(2, 256), (w, s[:, :, :2], b, slots), "scales/biases"),
        (torch.zeros(2, 256), (w, s, b.float(), slots), "one slot stride and dtype"),
        (torch.zeros(2, 256), (w.transpose(1, 2).contiguous().transpose(1, 2), s, b, slots), "w: each slot"),
        (torch.zeros(2, 256), (w, s, b, slots.long()), "int32"),
    ):
        with pytest.raises(ValueError, match=match):
            check_operands(x, *args, 4, 64)
