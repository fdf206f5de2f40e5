"""Where a decode call of the bulk-copy kernel spends its time: one launch's per-block timeline (the kernel's TRACE
instance writes globaltimer / clock64 at entry, x staged, each unit's stage landed, its products done, the unit
finished, and the end), summarised as median / max over blocks, cold (L2 flushed first) and warm (after 20 launches
on other slots, as in a graph of decode calls). H200 only (compute capability 9.0+); the kernel table
(`fmoe bench kernels --device cuda`) times the same calls in CUDA graphs.

    python3 bench/device/bulk_timeline.py [--rows 10 64] [--gate-up] [--variants base defer1 ...] [--time]

``--variants``: the launcher settings to compare (VARIANTS below: stage buffers, tiles a warp, overlapping the
previous launch, the slot table vouched for); each case is first checked against the FMA kernel (max |dy| / max |y|),
then traced; ``--time`` also times it as the kernel table times a row (CUDA graphs over disjoint slot
sets) against the HBM bandwidth measured in the same run.

Session 10 found with it (then as bench/device/qmv_int8.py) that x, loaded after a block's copies, waited behind every
block's copies: bench/results/cuda_stream.md, session 10.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from fmoe.bench import cuda_kernels as ck  # noqa: E402
from fmoe.kernels import cuda_qmv  # noqa: E402


def _operands(n_out: int, n_in: int, rows: int, gate_up: bool):
    """>= 400 MB of weight slots (gate and up tables for gate+up), x as the engine passes it, disjoint slot sets."""
    slots = max(2 * rows, -(-(400 << 20) // (n_out * n_in // 2)))
    tables = ck._tables(4, n_out, n_in, slots, 64, 2 if gate_up else 1)
    x = torch.randn(1 if gate_up else rows, n_in, device="cuda")
    x = x.to(torch.bfloat16 if gate_up or n_in > n_out else torch.float32)
    perm = torch.randperm(slots, device="cuda").to(torch.int32)
    sets = [perm[i:i + rows].contiguous() for i in range(0, slots - rows + 1, rows)]
    return tables, x, sets


def _launch(tables, x, sl, y, gate_up: bool, trace=None):
    mats = tables if gate_up else tables[:1]
    return cuda_qmv._launch(x, mats, sl, 4, 64, y, None, gate_up, cuda_qmv.BULK, _SLOTS_READY[0], trace)


def summary(trace: torch.Tensor) -> str:
    """Median / max over blocks (us from the first block's start, or per unit) of a [blocks, 64] trace."""
    t = [r for r in trace.view(-1, 64).cpu().tolist() if r[0]]
    g0 = min(r[0] for r in t)
    cpn = sorted(r[62] / max(1, r[63] - r[0]) for r in t)[len(t) // 2]       # clock cycles per ns

    def us(cyc):
        return cyc / cpn / 1e3

    def stat(v):
        v = sorted(v)
        return f"{v[len(v) // 2]:5.2f}/{v[-1]:5.2f}" if v else "-"
    prod, wait, fin = [], [], []
    for r in t:
        for i in range(min(19, r[61])):
            prod.append(us(r[4 + 3 * i] - r[3 + 3 * i]))
            fin.append(us(r[5 + 3 * i] - r[4 + 3 * i]))
            if i:
                wait.append(us(r[3 + 3 * i] - r[5 + 3 * (i - 1)]))
    units = sorted(r[61] for r in t)
    return (f"{len(t)} blocks, units/block {units[0]}-{units[-1]}, clock {cpn:.2f} GHz; median/max us: start "
            f"{stat([(r[0] - g0) / 1e3 for r in t])}, x staged {stat([us(r[2]) for r in t])}, first stage landed "
            f"{stat([us(r[3]) for r in t])}, products/unit {stat(prod)}, wait/unit {stat(wait)}, finish/unit "
            f"{stat(fin)}, end {stat([(r[63] - g0) / 1e3 for r in t])}")


# name: the cuda_qmv settings of a variant (the rest at their defaults); "slots_ready": launched as the engine's down
# projection (the slot table vouched for: copies before the wait for the previous kernel)
VARIANTS = {
    "base": {},
    "no-overlap": {"BULK_OVERLAP": False},
    "slots-ready": {"slots_ready": True},
    "tpw1-slots-ready": {"BULK_TILES_PER_WARP": 1, "BULK_STAGES": 4, "slots_ready": True},
    "stages3-slots-ready": {"BULK_STAGES": 3, "slots_ready": True},
    "linear-scales-slots-ready": {"BULK_SWIZZLE": False, "slots_ready": True},
    "producer-slots-ready": {"BULK_PRODUCER": True, "slots_ready": True},
    "producer-all-stages-slots-ready": {"BULK_PRODUCER": True, "BULK_STAGES": None, "slots_ready": True},
    "producer-stages3-slots-ready": {"BULK_PRODUCER": True, "BULK_STAGES": 3, "slots_ready": True},
    "no-producer-slots-ready": {"BULK_PRODUCER": False, "slots_ready": True},
}
# session 13: whole rows a warp (one matrix of 1024 inputs: the down projection), units of T tiles, at most S stages
for _t, _s in ((4, None), (2, None), (8, None), (4, 4), (2, 8), (1, None), (1, 16)):
    VARIANTS[f"whole-t{_t}-s{_s or 'all'}"] = {"BULK_PRODUCER": True, "BULK_WHOLE_ROWS": _t, "BULK_WHOLE_STAGES": _s,
                                              "slots_ready": True}
VARIANTS["split-slots-ready"] = {"BULK_PRODUCER": True, "BULK_WHOLE_ROWS": 0, "slots_ready": True}
VARIANTS["split-t4-slots-ready"] = {"BULK_PRODUCER": True, "BULK_WHOLE_ROWS": 0, "BULK_TILES_PER_WARP": 4,
                                    "slots_ready": True}
VARIANTS["thread0-slots-ready"] = {"BULK_PRODUCER": False, "slots_ready": True}
_SLOTS_READY = [False]


def _apply(settings: dict) -> dict:
    """Set a variant's cuda_qmv globals (and this script's slots_ready); return the previous values."""
    old = {k: getattr(cuda_qmv, k) for k in ("BULK_OVERLAP", "BULK_TILES_PER_WARP", "BULK_STAGES", "BULK_SWIZZLE",
                                              "BULK_PRODUCER", "BULK_WHOLE_ROWS",
                                              "BULK_WHOLE_STAGES")}
    old["slots_ready"] = _SLOTS_READY[0]
    for k, v in settings.items():
        if k == "slots_ready":
            _SLOTS_READY[0] = v
        else:
            setattr(cuda_qmv, k, v)
    return old


def parity(n_out: int, n_in: int, rows: int, gate_up: bool) -> float:
    """max |y - y_fma| / max |y_fma| of one launch of the current settings against the FMA kernel."""
    tables = ck._tables(4, n_out, n_in, 2 * rows, 64, 2 if gate_up else 1)
    x = torch.randn(1 if gate_up else rows, n_in, device="cuda")
    x = x.to(torch.bfloat16 if gate_up or n_in > n_out else torch.float32)
    sl = torch.randperm(2 * rows, device="cuda")[:rows].to(torch.int32)
    mats = tables if gate_up else tables[:1]
    y = cuda_qmv._launch(x, mats, sl, 4, 64, None, None, gate_up, cuda_qmv.BULK, _SLOTS_READY[0])
    ref = cuda_qmv._launch(x, mats, sl, 4, 64, None, None, gate_up, "fma")
    torch.cuda.synchronize()
    return float((y - ref).abs().max() / ref.abs().max())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10])
    ap.add_argument("--gate-up", action="store_true", help="also the gate+up mode (1024 x 4096)")
    ap.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    ap.add_argument("--time", action="store_true", help="also time each case in CUDA graphs")
    ap.add_argument("--no-trace", action="store_true", help="only the parity check and the timing")
    ap.add_argument("--touch", action="store_true", help="also a warm trace after one 4-byte read every 64 rows of "
                    "the traced slots' codes, scales and biases (their pages' address translations, ~1/128 of the "
                    "bytes in L2)")
    a = ap.parse_args()
    bw = ck.hbm_bandwidth() if a.time else 0.0
    if a.time:
        print(f"HBM (2 GiB device copy): {bw / 1e12:.2f} TB/s", flush=True)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    cases = [(shape, False) for shape in ck.SHAPES] + ([(ck.SHAPES[0], True)] if a.gate_up else [])
    for rows in a.rows:
        for (n_out, n_in), gate_up in cases:
            tables, x, sets = _operands(n_out, n_in, rows, gate_up)
            y = torch.empty(rows, n_out, dtype=torch.float32, device="cuda")
            trace = torch.zeros(cuda_qmv._sm_resources(x.device.index or 0)[0] * 2 * 64, dtype=torch.int64,
                                device="cuda")
            for v in a.variants:
                old = _apply(VARIANTS[v])
                try:
                    name = f"{'gate+up ' if gate_up else ''}{n_out}x{n_in} rows {rows} {v}"
                    err = parity(n_out, n_in, rows, gate_up)
                    print(f"parity {name}: {err:.1e}{'' if err < 1e-3 else '  FAILED'}", flush=True)
                    for warm in (() if a.no_trace else (False, True) + (("touched",) if a.touch else ())):
                        for i in range(3):                       # the last of three, each on fresh slots
                            if warm:
                                for j in range(20):
                                    _launch(tables, x, sets[(i * 21 + j) % len(sets)], y, gate_up)
                            else:
                                flush.fill_(i)
                            if warm == "touched":
                                sl = sets[(i * 21 + 20) % len(sets)].long()[:, None]
                                for t in (tables if gate_up else tables[:1]):
                                    for m in t:
                                        m[sl, torch.arange(0, m.shape[1], 64, device="cuda")[None, :], 0].sum()
                            trace.zero_()
                            torch.cuda.synchronize()          # (the kernel writes its entry times before its wait)
                            _launch(tables, x, sets[(i * 21 + 20) % len(sets)], y, gate_up, trace)
                            torch.cuda.synchronize()
                        print(f"{warm if warm == 'touched' else 'warm' if warm else 'cold'} {name}: "
                              f"{summary(trace)}", flush=True)
                    if a.time:
                        m = ck.measure(f"cuda bulk{' gate+up' if gate_up else ''}", 4, n_out, n_in, rows,
                                       slots_ready=_SLOTS_READY[0])
                        print(f"timed {name}: {m['seconds'] * 1e6:.1f} us = {m['bytes'] / m['seconds'] / bw:.2f} "
                              f"of HBM", flush=True)
                finally:
                    _apply(old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
