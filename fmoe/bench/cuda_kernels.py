"""`fmoe bench kernels --device cuda`: the GPU grouped quantized mat-vecs against the HBM bandwidth measured in the
same run: the CUDA C++ kernel the engine uses (fmoe/kernels/cuda_qmv.py) and the Triton kernel (its peer and
fallback, fmoe/kernels/triton_qmv.py).

    fmoe bench kernels --device cuda [--bits 2 4 8] [--sweep] [--json] [--write DIR]

For each bit width, on the 397B expert shapes (gate/up 1024 x 4096, down 4096 x 1024, group 64): the decode call of
one token (10 rows, distinct slots: the model's top-10), a saturating call (64 rows), and the engine's decode pair,
gate and up in one launch (``gate+up``). Activations as the engine has them: bf16 into gate/up, float32 into down.
Kernels: ``cuda`` is what the engine launches (4 bits on Hopper: the bulk-copy kernel, one matrix and gate+up,
each launch overlapping the previous one's drain), ``cuda (slots ready)`` the same launched as the engine launches
its down projection after gate+up (its slot table vouched for, so its copies start before the previous launch has
finished), ``cuda decode pair (gate+up, down)`` a layer's two launches in the engine's order (the down projection
of gate+up's output, slots ready; its peers read / copy the pair's bytes in one call), ``cuda fma`` /
``cuda <variant>`` the FMA / tensor-core kernels where another is the default, ``triton`` the Triton kernel; the
peers ``read (peer)`` (a kernel that only reads the same bytes) and ``copy (peer)`` (a device-to-device copy moving
them), timed the same way: what the launch, ramp-up and drain of one call of that size leave to any kernel.
Each timing replays a CUDA graph of launches that cycle through disjoint slot sets of a table several times the L2
(no launch reads what an earlier one left in L2; no Python launch overhead: the engine replays graphs too).
Bytes read = the rows' packed weights + scales + biases + activations + outputs; the fraction is (bytes / time) /
HBM bandwidth, where the bandwidth is that of a 2 GiB device-to-device copy (read + write bytes / time) in the same
run. ``--sweep`` also times every (rows per warp, warps, batches per warp) of the CUDA kernel and reports the best.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _time_graph(launches, reps: int = 20) -> float:
    """Seconds per launch: ``launches`` (callables, each one kernel launch) captured in one CUDA graph, replayed
    ``reps`` times after warm-up; the median of 5 timed batches."""
    import torch

    for f in launches:                       # build / compile before capture
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in launches:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps / len(launches))
    return sorted(times)[len(times) // 2]


def hbm_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes/s of a device-to-device copy (read + write)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * nbytes * 10 / (start.elapsed_time(end) / 1e3)


def _tables(bits: int, n_out: int, n_in: int, slots: int, group: int, kinds: int):
    import torch

    words = n_in * bits // 32
    out = []
    for _ in range(kinds):
        w = torch.randint(-2**31, 2**31 - 1, (slots, n_out, words), dtype=torch.int32, device="cuda")
        s = (torch.rand(slots, n_out, n_in // group, device="cuda") * 0.01).to(torch.bfloat16)
        b = (torch.rand(slots, n_out, n_in // group, device="cuda") * 0.01).to(torch.bfloat16)
        out.append((w, s, b))
    return out


def _slot_count(rows: int, per_slot: int) -> int:
    """Slots of a table holding >= 400 MB of weights (several times the L2), a multiple of ``rows``."""
    slots = max(2 * rows, -(-(400 << 20) // per_slot))
    return rows * (slots // rows)


def _slot_sets(slots: int, rows: int) -> list:
    """The table's slots shuffled into disjoint sets of ``rows`` (int32 on the GPU): one launch each."""
    import torch

    perm = torch.randperm(slots, device="cuda").to(torch.int32)
    return [perm[i:i + rows].contiguous() for i in range(0, slots, rows)]


_READ_PEER = r"""
__global__ void fmoe_read_peer(const uint4* p, long long n, unsigned* out) {
    unsigned acc = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {                 // a warp's load: 512 contiguous bytes
        const long long i = ((long long)blockIdx.x * 4 + k) * blockDim.x + threadIdx.x;
        if (i < n) { const uint4 v = p[i]; acc ^= v.x ^ v.y ^ v.z ^ v.w; }
    }
    if (acc == 0x9E3779B9u) out[0] = acc;         // keeps the loads
}
"""


_PEER_PROGRAM: list = []


def measure_read(nbytes: int) -> dict:
    """The read-only peer of a mat-vec reading ``nbytes``: a kernel that only loads nbytes (64 bytes a thread, four
    16-byte loads in flight each, one wave of blocks), timed the same way as the mat-vecs (a CUDA graph cycling
    through disjoint regions, >= 400 MB): what the launch, ramp-up and drain of one read of that size leave."""
    import ctypes

    import torch

    from fmoe.kernels import nvrtc

    n = max(2, -(-(400 << 20) // nbytes))
    words = nbytes // 16
    buf = torch.empty(n, words * 16, dtype=torch.uint8, device="cuda")
    out = torch.zeros(1, dtype=torch.int32, device="cuda")
    if not _PEER_PROGRAM:
        _PEER_PROGRAM.append(nvrtc.Program(_READ_PEER, "read_peer"))     # one program: its module loaded once
    fn = _PEER_PROGRAM[0].function("fmoe_read_peer", torch.cuda.current_device())
    blocks = -(-words // (256 * 4))

    def one(i):
        def launch():
            fn.launch((blocks, 1, 1), (256, 1, 1), 0, torch.cuda.current_stream().cuda_stream,
                      [ctypes.c_void_p(buf[i].data_ptr()), ctypes.c_longlong(words), ctypes.c_void_p(out.data_ptr())])
        return launch

    t = _time_graph([one(i) for i in range(n)])
    return {"kernel": "read (peer)", "seconds": t, "bytes": words * 16, "bytes_per_s": words * 16 / t}


def measure_copy(nbytes: int) -> dict:
    """The peer of a mat-vec that moves ``nbytes``: a device-to-device copy of nbytes / 2 (read + write = nbytes), timed
    the same way (a CUDA graph cycling through disjoint buffers, >= 400 MB), so the launch, the ramp-up and the drain of
    one call of that size are in it too: what any kernel of that size can reach on this GPU."""
    import torch

    half = nbytes // 2
    n = max(2, -(-(400 << 20) // half))
    src = torch.empty(n, half, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = _time_graph([(lambda i=i: dst[i].copy_(src[i])) for i in range(n)])
    return {"kernel": "copy (peer)", "seconds": t, "bytes": 2 * half, "bytes_per_s": 2 * half / t}


def measure(kernel: str, bits: int, n_out: int, n_in: int, rows: int, group: int = 64, config=None,
            slots_ready: bool = False) -> dict:
    """One row of the table: ``kernel`` "cuda" (what the engine launches: the tensor-core kernel where it applies),
    "cuda fma" (the FMA kernel), "triton", or either CUDA one with " gate+up". ``slots_ready``: launched as the
    engine launches its down projection (the slot table vouched for: cuda_qmv's slots_ready), named so in the row."""
    import torch

    from fmoe.kernels import cuda_qmv, triton_qmv

    gate_up = kernel.endswith("gate+up")
    name = kernel.replace(" gate+up", "").split(" ")
    variant = "fma" if config else (name[1] if len(name) > 1 else None)
    per_slot = n_out * (n_in * bits // 8 + 2 * 2 * n_in // group) * (2 if gate_up else 1)
    slots = _slot_count(rows, per_slot)
    tables = _tables(bits, n_out, n_in, slots, group, 2 if gate_up else 1)
    x_dtype = torch.bfloat16 if n_in > n_out or gate_up else torch.float32   # gate/up: bf16 hidden; down: float32 h
    x = torch.randn(1 if gate_up else rows, n_in, device="cuda").to(x_dtype)
    sets = _slot_sets(slots, rows)
    y = torch.empty(rows, n_out, dtype=torch.float32, device="cuda")
    (w, s, b) = tables[0]
    if kernel == "triton":
        def one(sl):
            return lambda: triton_qmv.grouped_qmv(x, w, s, b, sl, bits, group, out=y)
    elif gate_up:
        (wu, su, bu) = tables[1]

        def one(sl):
            return lambda: cuda_qmv.grouped_gate_up(x, w, s, b, wu, su, bu, sl, bits, group, out=y, config=config,
                                                    kernel=variant, slots_ready=slots_ready)
    else:
        def one(sl):
            return lambda: cuda_qmv.grouped_qmv(x, w, s, b, sl, bits, group, out=y, config=config, kernel=variant,
                                                slots_ready=slots_ready)
    t = _time_graph([one(sl) for sl in sets])
    nbytes = rows * per_slot + x.numel() * x.element_size() + y.numel() * 4
    label = kernel.replace("cuda", "cuda (slots ready)", 1) if slots_ready else kernel
    res = {"kernel": label, "bits": bits, "shape": [n_out, n_in], "rows": rows, "group_size": group, "seconds": t,
           "bytes": nbytes, "bytes_per_s": nbytes / t, "slots_cycled": slots}
    if kernel != "triton":
        chosen = variant or cuda_qmv.MMA_DEFAULT[gate_up]
        mma = cuda_qmv.MMA_VARIANTS.get(chosen)
        if chosen == cuda_qmv.BULK and cuda_qmv.supports_bulk(x, w, s, b, group, bits):
            swizzled = cuda_qmv._swizzled(s, n_in, group)
            whole = cuda_qmv._whole_rows(x, s, n_out, n_in, rows, group, gate_up, x.device.index or 0)
            res["config"] = ("tensor cores, bulk copies" + (", swizzled scales" if swizzled else "")
                             + (", producer warp" if cuda_qmv.BULK_PRODUCER else "")
                             + (f", whole rows a warp (units of {whole} tiles)" if whole else ""))
        elif mma is not None and cuda_qmv.supports_mma(x, w, group, bits):
            res["config"] = f"tensor cores {list(mma)}"
        else:
            res["config"] = list(config) if config else list(cuda_qmv.launch_config(n_in, bits, rows, gate_up))
    return res



def measure_pair(bits: int, rows: int = 10, group: int = 64) -> dict:
    """A decode step's routed experts of one layer as the engine launches them (fmoe/engine/device_experts.py):
    gate and up in one launch (silu(gate) * up into h), then the down projection of h (slots ready: its copies start
    before gate+up has finished), the same ``rows`` slots for both; cycled through >= 400 MB of weights in one CUDA
    graph. Bytes = both launches' weights + scales + biases + activations in and out."""
    import torch

    from fmoe.kernels import cuda_qmv

    (n_mid, n_hid) = SHAPES[0]
    gu_slot = 2 * n_mid * (n_hid * bits // 8 + 2 * 2 * n_hid // group)
    dn_slot = n_hid * (n_mid * bits // 8 + 2 * 2 * n_mid // group)
    slots = _slot_count(rows, gu_slot + dn_slot)
    (wg, sg, bg), (wu, su, bu) = _tables(bits, n_mid, n_hid, slots, group, 2)
    (wd, sd, bd), = _tables(bits, n_hid, n_mid, slots, group, 1)
    x = torch.randn(1, n_hid, device="cuda").to(torch.bfloat16)
    h = torch.empty(rows, n_mid, dtype=torch.float32, device="cuda")
    y = torch.empty(rows, n_hid, dtype=torch.float32, device="cuda")
    sets = _slot_sets(slots, rows)
    launches = []
    for sl in sets:
        launches.append(lambda sl=sl: cuda_qmv.grouped_gate_up(x, wg, sg, bg, wu, su, bu, sl, bits, group, out=h,
                                                               slots_ready=True))
        launches.append(lambda sl=sl: cuda_qmv.grouped_qmv(h, wd, sd, bd, sl, bits, group, out=y, slots_ready=True))
    t = _time_graph(launches) * 2                   # seconds per launch -> per pair
    nbytes = rows * (gu_slot + dn_slot) + x.numel() * 2 + 2 * h.numel() * 4 + y.numel() * 4
    return {"kernel": "cuda decode pair (gate+up, down)", "bits": bits, "shape": [n_mid, n_hid], "rows": rows,
            "group_size": group, "seconds": t, "bytes": nbytes, "bytes_per_s": nbytes / t, "slots_cycled": slots,
            "config": "gate+up then down, both slots ready, as fmoe/engine/device_experts.py launches them"}

SHAPES = ((1024, 4096), (4096, 1024))
SWEEP = [(rpw, nw, nb) for rpw in (1, 2, 4) for nw in (4, 8) for nb in (1, 2, 4)]


def _best(kernel: str, bits: int, n_out: int, n_in: int, rows: int, configs) -> dict:
    """The fastest configuration of ``configs``; every one's time printed."""
    ms = [measure(kernel, bits, n_out, n_in, rows, config=c) for c in configs]
    print(f"sweep {kernel} {bits}-bit {n_out}x{n_in} rows {rows}: " +
          ", ".join(f"{m['config']} {m['seconds'] * 1e6:.1f}" for m in ms), file=sys.stderr)
    best = min(ms, key=lambda m: m["seconds"])
    best["swept"] = True
    return best


def bulk_ok() -> bool:
    """Whether this GPU runs the bulk-copy kernel (compute capability 9.0+)."""
    import torch

    return torch.cuda.get_device_capability() >= (9, 0)


def run(bits_list=(2, 4, 8), sweep: bool = False, triton: bool = True) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("fmoe bench kernels --device cuda: no CUDA device")
    bw = hbm_bandwidth()
    rows = []

    def add(m):
        m["fraction_of_hbm"] = m["bytes_per_s"] / bw
        rows.append(m)
        print(f"{m['kernel']:>13} {m['bits']}-bit {m['shape'][0]}x{m['shape'][1]} rows {m['rows']}: "
              f"{m['seconds'] * 1e6:.1f} us, {m['bytes_per_s'] / 1e12:.2f} TB/s = {m['fraction_of_hbm']:.2f} of HBM "
              f"{m.get('config', '')}", file=sys.stderr)
        return m

    from fmoe.kernels import cuda_qmv
    from fmoe.kernels.cuda_qmv import BITS

    for bits in bits_list:
        if bits not in BITS:                  # 3/5/6 bits: the Triton kernel only
            for (n_out, n_in) in SHAPES:
                for r in (10, 64):
                    add(measure("triton", bits, n_out, n_in, r))
            continue
        for (n_out, n_in) in SHAPES:
            for r in (10, 64):
                if sweep:
                    add(_best("cuda fma", bits, n_out, n_in, r, SWEEP))
                m = add(measure("cuda", bits, n_out, n_in, r))
                if bits == 4:
                    for peer in (measure_read, measure_copy):
                        add({**peer(m["bytes"]), "bits": bits, "shape": [n_out, n_in], "rows": r})
                    if bulk_ok():                   # as the engine launches its down projection
                        add(measure("cuda", bits, n_out, n_in, r, slots_ready=True))
                    add(measure("cuda fma", bits, n_out, n_in, r))
                    for v in (*cuda_qmv.MMA_VARIANTS, cuda_qmv.BULK):
                        if v != cuda_qmv.MMA_DEFAULT[False] and (v != cuda_qmv.BULK or bulk_ok()):
                            add(measure(f"cuda {v}", bits, n_out, n_in, r))
                if triton:
                    add(measure("triton", bits, n_out, n_in, r))
        for r in (10,):
            if sweep:
                add(_best("cuda fma gate+up", bits, *SHAPES[0], r, [c for c in SWEEP if c[0] <= 2]))
            m = add(measure("cuda gate+up", bits, *SHAPES[0], r))
            if bits == 4:
                for peer in (measure_read, measure_copy):
                    add({**peer(m["bytes"]), "bits": bits, "shape": list(SHAPES[0]), "rows": r})
                if bulk_ok():
                    add(measure("cuda gate+up", bits, *SHAPES[0], r, slots_ready=True))
                if cuda_qmv.MMA_DEFAULT[True] is not None:          # the default is not the FMA kernel: time it too
                    add(measure("cuda fma gate+up", bits, *SHAPES[0], r))
                for v in (*cuda_qmv.MMA_VARIANTS, cuda_qmv.BULK):
                    if v != cuda_qmv.MMA_DEFAULT[True] and (v != cuda_qmv.BULK or bulk_ok()):
                        add(measure(f"cuda {v} gate+up", bits, *SHAPES[0], r))
                if bulk_ok():                       # the layer's two launches, as the engine makes them
                    m = add(measure_pair(bits, r))
                    for peer in (measure_read, measure_copy):
                        add({**peer(m["bytes"]), "bits": bits, "shape": list(SHAPES[0]), "rows": r, "pair": True})
    of_read_peer(rows)
    return {"device": torch.cuda.get_device_name(), "hbm_copy_bytes_per_s": bw, "rows": rows,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def of_read_peer(rows: list) -> None:
    """Each mat-vec row's bytes/s as a fraction of the read-only peer's of the same call (same bits, shape, rows and
    kind: one matrix, gate+up or the decode pair), where the run has that peer: ``fraction_of_read_peer``."""
    def key(r):
        pair = r.get("pair") or "pair" in r["kernel"]
        kind = "pair" if pair else "gate+up" if r["kernel"].endswith("gate+up") else ""
        return (r["bits"], tuple(r["shape"]), r["rows"], kind)

    peers, last = {}, None
    for r in rows:                    # a peer follows the engine's row of its call ("cuda" / "cuda gate+up" / pair)
        if r["kernel"] == "read (peer)" and last is not None:
            peers[last] = r["bytes_per_s"]
        elif r["kernel"] in ("cuda", "cuda gate+up") or "pair" in r["kernel"]:   # not "(slots ready)": same call
            last = key(r)
    for r in rows:
        if "peer" not in r["kernel"] and key(r) in peers:
            r["fraction_of_read_peer"] = r["bytes_per_s"] / peers[key(r)]


def markdown(res: dict) -> str:
    out = ["# GPU grouped quantized mat-vec vs HBM bandwidth (`fmoe bench kernels --device cuda`)", "",
           f"{res['device']}, {res['when']}; HBM bandwidth of a 2 GiB device copy in the same run: "
           f"{res['hbm_copy_bytes_per_s'] / 1e12:.2f} TB/s. Times: CUDA graphs cycling through disjoint slot sets "
           "(no L2 reuse between launches).", "",
           "| kernel | bits | out x in | rows | time (us) | TB/s | of HBM | of the read peer | FMA: rows/warp, warps, "
           "batches; mma: inputs/warp, warp staging, blocks/SM |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cfg = r.get("config", "")
        if r.get("swept"):
            cfg = f"{cfg} (best of sweep)"
        peer = f"{r['fraction_of_read_peer']:.2f}" if "fraction_of_read_peer" in r else ""
        name = r["kernel"] + (" of the pair" if r.get("pair") else "")
        out.append(f"| {name} | {r['bits']} | {r['shape'][0]} x {r['shape'][1]} | {r['rows']} | "
                   f"{r['seconds'] * 1e6:.1f} | {r['bytes_per_s'] / 1e12:.2f} | {r['fraction_of_hbm']:.2f} | {peer} | "
                   f"{cfg} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fmoe bench kernels --device cuda")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--sweep", action="store_true", help="also time every launch configuration of the CUDA kernel")
    ap.add_argument("--no-triton", action="store_true", help="skip the Triton kernel (the peer)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", default=None, help="write cuda_kernels.json/.md into this folder")
    a = ap.parse_args(argv)
    res = run(a.bits, a.sweep, not a.no_triton)
    print(json.dumps(res, indent=1) if a.json else markdown(res))
    if a.write:
        d = Path(a.write)
        d.mkdir(parents=True, exist_ok=True)
        (d / "cuda_kernels.json").write_text(json.dumps(res, indent=1) + "\n")
        (d / "cuda_kernels.md").write_text(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
