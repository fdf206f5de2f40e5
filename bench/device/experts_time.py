"""A token's experts at decode on the H200, timed as the kernel table times them (bench/results/cuda_kernels.md):
one launch (fmoe_moe4_bulk) against two (gate+up, then down), the slots vouched for or not, with the one-matrix rows
of the same run for reference. Session 12.

    python3 bench/device/experts_time.py [--rows 10]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fmoe.bench import cuda_kernels as ck  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, nargs="+", default=[10])
ap.add_argument("--set", nargs="*", default=[], help="cuda_qmv settings NAME=VALUE (Python literals) first")
a = ap.parse_args()
for kv in a.set:
    import ast

    from fmoe.kernels import cuda_qmv
    name, value = kv.split("=", 1)
    setattr(cuda_qmv, name, ast.literal_eval(value))
    print(f"cuda_qmv.{name} = {value}")
bw = ck.hbm_bandwidth()
print(f"HBM (2 GiB device copy): {bw / 1e12:.2f} TB/s")


def show(m):
    print(f"{m['kernel']:>40} rows {m['rows']}: {m['seconds'] * 1e6:6.1f} us = {m['bytes_per_s'] / bw:.2f} of HBM "
          f"({m['bytes'] / 1e6:.1f} MB)", flush=True)


def timeline(rows: int, ready: bool) -> None:
    """One warm launch's per-block marks (us from the first block's entry), median / max, by gate+up pairs a block."""
    import torch

    from fmoe.kernels import cuda_qmv

    (n_mid, n_in) = ck.SHAPES[0]
    gate, up = ck._tables(4, n_mid, n_in, 4 * rows, 64, 2)
    down = ck._tables(4, n_in, n_mid, 4 * rows, 64, 1)[0]
    x = torch.randn(1, n_in, device="cuda").bfloat16()
    trace = torch.zeros(132 * 8, dtype=torch.int64, device="cuda")
    for i in range(4):                                         # the last of four launches on other slots
        sl = torch.arange(i * rows, (i + 1) * rows, dtype=torch.int32, device="cuda")
        trace.zero_()
        cuda_qmv.grouped_experts(x, gate, up, down, sl, 4, 64, slots_ready=ready, trace=trace)
    torch.cuda.synchronize()
    t = [r for r in trace.view(-1, 8).cpu().tolist() if r[0]]
    t0 = min(r[0] for r in t)
    pairs_total = rows * 32
    names = ("x staged", "gate+up done", "first h row staged", "end")
    for p in sorted({pairs_total // len(t) + (b < pairs_total % len(t)) for b in range(len(t))}):
        sel = [r for b, r in enumerate(t) if pairs_total // len(t) + (b < pairs_total % len(t)) == p]
        parts = []
        for k, name in zip((1, 2, 3, 4), names):
            v = sorted((r[k] - t0) / 1e3 for r in sel if r[k])
            parts.append(f"{name} {v[len(v) // 2]:5.2f}/{v[-1]:5.2f}" if v else f"{name} -")
        print(f"timeline rows {rows} ready {ready}: {len(sel)} blocks with {p} pairs, median/max us: "
              + ", ".join(parts), flush=True)


for rows in a.rows:
    for ready in (False, True):
        timeline(rows, ready)
    for ready in (False, True):
        for one in (True, False):
            show(ck.measure_experts(4, rows, one_launch=one, slots_ready=ready))
    show(ck.measure("cuda gate+up", 4, 1024, 4096, rows, slots_ready=True))
    show(ck.measure("cuda", 4, 4096, 1024, rows, slots_ready=True))
