"""EXPERIMENT (written in session 9, first run in session 10): the bulk-copy 4-bit mat-vec with its products on int8
tensor cores (bench/device/qmv_int8.cu, appended to fmoe/kernels/cuda_qmv.cu) against the FMA kernel (results) and
against the bulk kernel and the read-only peer (time), as `fmoe bench kernels --device cuda` times a row.

    python3 bench/device/qmv_int8.py [--rows 10 20 64] [--no-time] [--no-check]
"""
import argparse
import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from fmoe.bench import cuda_kernels as ck  # noqa: E402
from fmoe.kernels import cuda_qmv, nvrtc  # noqa: E402

PROGRAM = nvrtc.Program(cuda_qmv._PROGRAM.source + "\n" + Path(__file__).with_name("qmv_int8.cu").read_text(),
                        "cuda_qmv_int8")


def qmv_int8(x, w, s, b, slots, group: int, out=None, tpw: int = 2, stages: int | None = None, ablate: int = 0,
             trace=None, pad: int = 0, early_x: int = 0):
    """y[r] = W[slots[r]] @ x[r] by fmoe_qmv4_bulk8 (4 bits; the bulk kernel's operand rules). ``tpw`` tiles a warp,
    ``stages`` stage buffers (None: BULK_STAGES), ``ablate`` 1 products only / 2 copies only, ``trace`` a uint64
    tensor of 64 per block (see the kernel), ``pad`` bytes between rows' codes in shared memory (one copy a row),
    ``early_x``: 1 x's loads before the first copies, 2 x staged before them."""
    n_out, n_in, rows = w.shape[1], w.shape[2] * 8, slots.shape[0]
    assert cuda_qmv.supports_bulk(x, w, s, b, group, 4), "operands the bulk kernel does not take"
    kw = cuda_qmv._bulk_shape(n_in)[0]
    sr = 16 * (16 // (n_in // kw)) * tpw
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    fn = PROGRAM.function(f"fmoe_qmv4_bulk8<{group}, {cuda_qmv._DTYPE_CODE[x.dtype]}, "
                          f"{cuda_qmv._DTYPE_CODE[s.dtype]}, {kw}, {tpw}, {pad}>", device)
    stage_bytes = sr * (n_in // 2 + pad) + 2 * sr * (n_in // group) * s.element_size()
    x_bytes = (n_in // 2 + 2 * (n_in // group)) * 4
    sms, smem_max = cuda_qmv._sm_resources(device)
    units = rows * (n_out // sr)
    want = stages or cuda_qmv.BULK_STAGES or 32
    stages = min(want, (smem_max - fn.static_shared - x_bytes) // stage_bytes, -(-units // min(sms, units)))
    y = out if out is not None else torch.empty(rows, n_out, dtype=torch.float32, device=x.device)
    args = cuda_qmv._Args(x.data_ptr(), 0 if x.shape[0] == 1 else x.stride(0), w.data_ptr(), s.data_ptr(),
                          b.data_ptr(), w.data_ptr(), s.data_ptr(), b.data_ptr(), w.stride(0), s.stride(0),
                          slots.data_ptr(), y.data_ptr(), n_out, n_in)
    fn.launch((min(sms, units), 1, 1), (512, 1, 1), stages * stage_bytes + x_bytes,
              torch.cuda.current_stream(x.device).cuda_stream,
              [args, ctypes.c_int(rows), ctypes.c_int(stages), ctypes.c_int(ablate), ctypes.c_int(int(early_x)),
               ctypes.c_void_p(trace.data_ptr() if trace is not None else 0)])
    return y


def fits(n_in: int, tpw: int, stages: int, pad: int = 0) -> bool:
    """Whether ``stages`` stage buffers of tpw tiles a warp fit beside the staged x (bf16 scales, group 64)."""
    sr = 16 * (16 // (n_in // cuda_qmv._bulk_shape(n_in)[0])) * tpw
    stage_bytes = sr * (n_in // 2 + pad) + 2 * sr * (n_in // 64) * 2
    return stages * stage_bytes + (n_in // 2 + 2 * (n_in // 64)) * 4 + 8192 <= cuda_qmv._sm_resources(0)[1]


VARIANTS = {"base": dict(pad=0, early_x=0), "early": dict(pad=0, early_x=1), "xfirst": dict(pad=0, early_x=2)}


def check() -> int:
    """Against the FMA kernel: the 397B shapes at 10 and 64 rows, groups 32/64/128, bf16 and float32 activations
    and scales, one x per row and one shared. Relative to the largest |y|: the CPU kernel's int16 contract, 1e-3."""
    bad = 0
    for n_out, n_in in ck.SHAPES:
        for group in (32, 64, 128):
            for s_dtype in (torch.bfloat16, torch.float32):
                w, s, b = ck._tables(4, n_out, n_in, 8, group, 1)[0]
                s = s.to(s_dtype)
                b = (b - 0.005).to(s_dtype)
                for rows in (10, 64):
                    slots = torch.randint(0, 8, (rows,), dtype=torch.int32, device="cuda")
                    for x in (torch.randn(rows, n_in, device="cuda"), torch.randn(1, n_in, device="cuda").bfloat16()):
                        ref = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, group, kernel="fma")
                        err = max(((qmv_int8(x, w, s, b, slots, group, tpw=t, pad=p, early_x=e) - ref).abs().max()
                                   / ref.abs().max()).item() for t, p, e in ((2, 0, 0), (2, 0, 1), (2, 0, 2),
                                                                             (1, 64, 1)))
                        ok = err <= 1e-3
                        bad += not ok
                        print(f"{'ok ' if ok else 'BAD'} {n_out}x{n_in} group {group} scales {s_dtype} rows {rows} "
                              f"x {tuple(x.shape)} {x.dtype}: rel err {err:.2e}", flush=True)
    return bad


def _operands(n_out: int, n_in: int, rows: int):
    """>= 400 MB of weight slots, x, disjoint slot sets and an output, as the kernel table times a row."""
    w, s, b = ck._tables(4, n_out, n_in, max(2 * rows, -(-(400 << 20) // (n_out * n_in // 2))), 64, 1)[0]
    x = torch.randn(rows, n_in, device="cuda").to(torch.float32 if n_in < n_out else torch.bfloat16)
    perm = torch.randperm(w.shape[0], device="cuda").to(torch.int32)
    sets = [perm[i:i + rows].contiguous() for i in range(0, w.shape[0] - rows + 1, rows)]
    return w, s, b, x, sets, torch.empty(rows, n_out, dtype=torch.float32, device="cuda")


def time_rows(rows_list, bw: float) -> None:
    """Time per launch of the int8 kernel's variants (VARIANTS) at 2 tiles a warp and 2/3 stages, the ablations
    (products only, copies only) of early and xfirst, beside the bf16 bulk kernel, mma-k256 and the read peer."""
    for rows in rows_list:
        for n_out, n_in in ck.SHAPES:
            m = ck.measure("cuda bulk", 4, n_out, n_in, rows)
            k256 = ck.measure("cuda mma-k256", 4, n_out, n_in, rows)
            peer = ck.measure_read(m["bytes"])
            w, s, b, x, sets, y = _operands(n_out, n_in, rows)
            res = [("read peer", peer["seconds"]), ("bulk (bf16 mma)", m["seconds"]), ("mma-k256", k256["seconds"])]
            runs = [(f"int8 {v} tpw2 st{st}", dict(tpw=2, stages=st, **kw)) for v, kw in VARIANTS.items()
                    for st in (2, 3)]
            runs += [(f"int8 {v} tpw2 st2 {nm}", dict(tpw=2, stages=2, ablate=ab, **VARIANTS[v]))
                     for v in ("early", "xfirst") for ab, nm in ((1, "products only"), (2, "copies only"))]
            for name, kw in runs:
                if fits(n_in, kw["tpw"], kw["stages"], kw["pad"]):
                    res.append((name, ck._time_graph(
                        [(lambda sl=sl, kw=kw: qmv_int8(x, w, s, b, sl, 64, out=y, **kw)) for sl in sets])))
            for name, sec in res:
                frac = m["bytes"] / sec / bw
                print(f"{name:>34} {n_out}x{n_in} rows {rows}: {sec * 1e6:6.1f} us = {frac:.2f} of HBM", flush=True)
            sets = None
            torch.cuda.empty_cache()


def trace_rows(rows: int, configs, warm: bool) -> None:
    """One cold launch's timeline per block (the kernel's trace), summarised: when blocks start, x is staged, each
    unit's stage lands, its products end and the unit ends (us from the first block's start; median / max over
    blocks), the per-unit wait and product times, and when blocks end. ``warm``: the launch follows 20 others
    (no flush), as in a graph of decode calls; else the L2 is flushed first."""
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for n_out, n_in in ck.SHAPES:
        w, s, b, x, sets, y = _operands(n_out, n_in, rows)
        for name, kw in configs:
            if not fits(n_in, kw["tpw"], kw["stages"], kw["pad"]):
                continue
            tr = torch.zeros(132 * 64, dtype=torch.int64, device="cuda")
            for i in range(3):                                   # the last of three, each on fresh slots
                if warm:
                    for j in range(20):
                        qmv_int8(x, w, s, b, sets[(i * 21 + j) % len(sets)], 64, out=y, **kw)
                else:
                    flush.fill_(i)
                torch.cuda.synchronize()
                qmv_int8(x, w, s, b, sets[(i * 21 + 20) % len(sets)], 64, out=y, trace=tr, **kw)
                torch.cuda.synchronize()
            t = tr.view(-1, 64).cpu().tolist()
            t = [r for r in t if r[0]]
            g0 = min(r[0] for r in t)
            rate = [r[62] / max(1, r[63] - r[0]) for r in t]     # cycles per ns
            cpn = sorted(rate)[len(rate) // 2]

            def us(cyc):
                return cyc / cpn / 1e3

            def stat(v):
                v = sorted(v)
                return f"{v[len(v) // 2]:5.2f}/{v[-1]:5.2f}"
            starts = [(r[0] - g0) / 1e3 for r in t]
            ends = [(r[63] - g0) / 1e3 for r in t]
            xst = [us(r[2]) for r in t]
            land0 = [us(r[3]) for r in t]
            prod, wait, fin = [], [], []
            for r in t:
                n = min(19, r[61])
                for i in range(n):
                    prod.append(us(r[4 + 3 * i] - r[3 + 3 * i]))
                    fin.append(us(r[5 + 3 * i] - r[4 + 3 * i]))
                    if i:
                        wait.append(us(r[3 + 3 * i] - r[5 + 3 * (i - 1)]))
            units = sorted(r[61] for r in t)
            print(f"trace {'warm' if warm else 'cold'} {n_out}x{n_in} rows {rows} {name}: {len(t)} blocks, "
                  f"units/block "
                  f"{units[0]}-{units[-1]}, clock {cpn:.2f} GHz; median/max us: start {stat(starts)}, x staged "
                  f"{stat(xst)}, first stage landed {stat(land0)}, products/unit {stat(prod)}, wait/unit "
                  f"{stat(wait) if wait else '-'}, finish/unit {stat(fin)}, end {stat(ends)}", flush=True)
        sets = None
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10, 20, 64])
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    a = ap.parse_args()
    bad = 0 if a.no_check else check()
    print(f"{bad} failed checks")
    if not a.no_time:
        bw = ck.hbm_bandwidth()
        print(f"HBM copy bandwidth {bw / 1e12:.2f} TB/s")
        cfg = [(f"{v} tpw2 st{st}", dict(tpw=2, stages=st, **VARIANTS[v])) for v, st in
               (("base", 2), ("early", 2), ("xfirst", 2), ("xfirst", 3))]
        trace_rows(10, cfg, warm=False)
        trace_rows(10, cfg, warm=True)
        time_rows(a.rows, bw)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
