"""The GPU grouped mat-vec (fmoe/kernels/triton_qmv.py) against the reference dequantize + matmul, for every bit
width and group size, on a table of expert slots. On CUDA where a GPU exists; otherwise in Triton's interpreter when
FMOE_TRITON_INTERPRET=1 (slow; Triton is not installed by CI, which has torch's CPU wheel: then it skips)."""
import numpy as np
import pytest
from triton_env import CUDA, DEVICE, INTERPRET, torch  # noqa: F401  (skips without GPU or interpreter)

from fmoe.kernels.quant import dequantize, quantize  # noqa: E402
from fmoe.kernels.triton_qmv import grouped_qmv  # noqa: E402


def _table(bits, group, n_out, n_in, slots=3, seed=0):
    rng = np.random.default_rng(seed)
    qs = [quantize(rng.standard_normal((n_out, n_in)).astype(np.float32), bits, group) for _ in range(slots)]
    sdt = torch.bfloat16 if CUDA else torch.float32
    conv = (lambda a: torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)) if CUDA else \
        (lambda a: torch.from_numpy(dequantize_scales(a)))
    w = torch.from_numpy(np.stack([q.weight.view(np.int32) for q in qs])).to(DEVICE)
    s = torch.stack([conv(q.scales) for q in qs]).to(DEVICE, sdt)
    b = torch.stack([conv(q.biases) for q in qs]).to(DEVICE, sdt)
    dense = np.stack([dequantize(q) for q in qs])
    return w, s, b, dense


def dequantize_scales(a):
    from fmoe.kernels.quant import bf16_to_f32
    return bf16_to_f32(a) if a.dtype == np.uint16 else a.astype(np.float32)


@pytest.mark.parametrize("units", ["0", "1"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_grouped_qmv_matches_dequantize_matmul(bits, group, units, monkeypatch):
    """Every width and group; 3/5/6 bits on the unit kernel (the default) and on the byte kernel
    (FMOE_TRITON_UNITS=0)."""
    if units == "1" and bits in (2, 4, 8):
        pytest.skip("the unit kernel is for 3/5/6 bits")
    monkeypatch.setenv("FMOE_TRITON_UNITS", units)
    # interpreter: 37 rows (a partial block) and four steps of 128 inputs; a GPU: the 397B gate/up shape
    n_out, n_in, step = (37, 512, {"block_k": 128}) if INTERPRET and not CUDA else (1024, 4096, {})
    w, s, b, dense = _table(bits, group, n_out, n_in)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, n_in)).astype(np.float32)
    slots = np.array([2, 0, 2, 1], dtype=np.int32)
    ref = np.einsum("roi,ri->ro", dense[slots], x)
    y = grouped_qmv(torch.from_numpy(x).to(DEVICE), w, s, b, torch.from_numpy(slots).to(DEVICE), bits, group, **step)
    np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    # one x shared by every row (gate and up of a decode token)
    y1 = grouped_qmv(torch.from_numpy(x[:1]).to(DEVICE), w, s, b, torch.from_numpy(slots).to(DEVICE), bits, group)
    ref1 = np.einsum("roi,i->ro", dense[slots], x[0])
    np.testing.assert_allclose(y1.cpu().numpy(), ref1, rtol=2e-3, atol=2e-3 * np.abs(ref1).max())


@pytest.mark.skipif(not CUDA, reason="the direct launch path exists on CUDA only")
def test_repeated_launches_take_the_direct_path_and_agree():
    from fmoe.kernels import triton_qmv

    w, s, b, dense = _table(4, 64, 1024, 4096)
    x = torch.randn(3, 4096, device=DEVICE)
    slots = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEVICE)
    ref = np.einsum("roi,ri->ro", dense[slots.cpu().numpy()], x.cpu().numpy())
    outs = [grouped_qmv(x, w, s, b, slots, 4, 64).cpu().numpy() for _ in range(4)]   # JIT, checked, direct, direct
    for y in outs:
        np.testing.assert_allclose(y, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    assert triton_qmv._FAST["on"] and any(checked for _, checked in triton_qmv._COMPILED.values())


@pytest.mark.parametrize("bits", [3, 4])
def test_slots_at_a_stride_as_the_vram_tier_keeps_them(bits):
    """Each slot's matrices inside one byte region per expert (fmoe/engine/device_experts.py): strided views, the
    same result as contiguous tables and as the torch reference (fmoe/kernels/grouped_qmv.py)."""
    from fmoe.kernels.grouped_qmv import grouped_qmv_torch

    n_out, n_in, group = (48, 256, 64) if INTERPRET and not CUDA else (512, 2048, 64)
    w, s, b, dense = _table(bits, group, n_out, n_in)
    S = w.shape[0]
    parts = [w, s, b]
    offs, off = [], 256
    for t in parts:
        offs.append(off)
        off += t[0].numel() * t.element_size() + 320         # gaps between arrays, as in a template
    region = torch.zeros((S, off + 4096), dtype=torch.uint8, device=DEVICE)
    views = []
    for t, o in zip(parts, offs):
        n = t[0].numel() * t.element_size()
        v = region[:, o:o + n].view(t.dtype).view(S, *t.shape[1:])
        v.copy_(t)
        views.append(v)
    assert views[0].stride(0) != views[0][0].numel()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((1, n_in)).astype(np.float32)).to(DEVICE)
    slots = torch.tensor([1, 2, 0, 1], dtype=torch.int32, device=DEVICE)
    y = grouped_qmv(x, *views, slots, bits, group)
    ref = np.einsum("roi,i->ro", dense[slots.cpu().numpy()], x[0].cpu().numpy())
    np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    y_torch = grouped_qmv_torch(x, *views, slots, bits, group)
    np.testing.assert_allclose(y_torch.cpu().numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

