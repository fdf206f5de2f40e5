"""EXPERIMENT (written in session 9, not run on a GPU yet): the bulk-copy 4-bit mat-vec with its products on int8
tensor cores (bench/device/qmv_int8.cu, appended to fmoe/kernels/cuda_qmv.cu) against the FMA kernel (results) and
against the bulk kernel and the read-only peer (time), as `fmoe bench kernels --device cuda` times a row.

    python3 bench/device/qmv_int8.py [--rows 10 64] [--no-time]
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


def qmv_int8(x, w, s, b, slots, group: int, out=None):
    """y[r] = W[slots[r]] @ x[r] by fmoe_qmv4_bulk8 (4 bits; the bulk kernel's operand rules)."""
    n_out, n_in, rows = w.shape[1], w.shape[2] * 8, slots.shape[0]
    assert cuda_qmv.supports_bulk(x, w, s, b, group, 4), "operands the bulk kernel does not take"
    kw, sr = cuda_qmv._bulk_shape(n_in)
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    fn = PROGRAM.function(f"fmoe_qmv4_bulk8<{group}, {cuda_qmv._DTYPE_CODE[x.dtype]}, "
                          f"{cuda_qmv._DTYPE_CODE[s.dtype]}, {kw}, {cuda_qmv.BULK_TILES_PER_WARP}>", device)
    stage_bytes = cuda_qmv._bulk_bytes(x, s, n_in, group)[0]
    x_bytes = (n_in // 2 + 2 * (n_in // group)) * 4
    sms, smem_max = cuda_qmv._sm_resources(device)
    units = rows * (n_out // sr)
    stages = min(cuda_qmv.BULK_STAGES or 32, (smem_max - fn.static_shared - x_bytes) // stage_bytes,
                 -(-units // min(sms, units)))
    y = out if out is not None else torch.empty(rows, n_out, dtype=torch.float32, device=x.device)
    args = cuda_qmv._Args(x.data_ptr(), 0 if x.shape[0] == 1 else x.stride(0), w.data_ptr(), s.data_ptr(),
                          b.data_ptr(), w.data_ptr(), s.data_ptr(), b.data_ptr(), w.stride(0), s.stride(0),
                          slots.data_ptr(), y.data_ptr(), n_out, n_in)
    fn.launch((min(sms, units), 1, 1), (512, 1, 1), stages * stage_bytes + x_bytes,
              torch.cuda.current_stream(x.device).cuda_stream, [args, ctypes.c_int(rows), ctypes.c_int(stages)])
    return y


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
                        err = ((qmv_int8(x, w, s, b, slots, group) - ref).abs().max() / ref.abs().max()).item()
                        ok = err <= 1e-3
                        bad += not ok
                        print(f"{'ok ' if ok else 'BAD'} {n_out}x{n_in} group {group} scales {s_dtype} rows {rows} "
                              f"x {tuple(x.shape)} {x.dtype}: rel err {err:.2e}", flush=True)
    return bad


def time_rows(rows_list) -> None:
    bw = ck.hbm_bandwidth()
    print(f"HBM copy bandwidth {bw / 1e12:.2f} TB/s")
    for rows in rows_list:
        for n_out, n_in in ck.SHAPES:
            m = ck.measure("cuda bulk", 4, n_out, n_in, rows)
            peer = ck.measure_read(m["bytes"])
            w, s, b = ck._tables(4, n_out, n_in, max(2 * rows, -(-(400 << 20) // (n_out * n_in // 2))), 64, 1)[0]
            x = torch.randn(rows, n_in, device="cuda").to(torch.float32 if n_in < n_out else torch.bfloat16)
            perm = torch.randperm(w.shape[0], device="cuda").to(torch.int32)
            sets = [perm[i:i + rows].contiguous() for i in range(0, w.shape[0] - rows + 1, rows)]
            y = torch.empty(rows, n_out, dtype=torch.float32, device="cuda")
            t = ck._time_graph([(lambda sl=sl: qmv_int8(x, w, s, b, sl, 64, out=y)) for sl in sets])
            for name, sec in (("read peer", peer["seconds"]), ("bulk (bf16 mma)", m["seconds"]), ("bulk int8", t)):
                frac = m["bytes"] / sec / bw
                print(f"{name:>16} {n_out}x{n_in} rows {rows}: {sec * 1e6:6.1f} us = {frac:.2f} of HBM", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10, 64])
    ap.add_argument("--no-time", action="store_true")
    a = ap.parse_args()
    bad = check()
    print(f"{bad} failed checks")
    if not a.no_time:
        time_rows(a.rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
