"""``fmoe bench kernels``: batch-1 quantized mat-vec throughput against the machine's memory read bandwidth.

Measures, in one run and with the same thread count:

* ``mem_read_gbps``: the best of a 1-thread numpy ``sum``, the same split over ``threads`` Python threads, a
  ``threads``-thread ``torch.sum`` and the mat-vec's read-only peer (``native_read_gbps``: qmv.cpp
  ``fmoe_read_bytes``, the kernel's threads, chunks and prefetch with loads only) over a 1 GiB float32 array (bytes
  read / time);
* for bits 2, 3, 4, 5, 6, 8: ``TorchQLinear`` on a 1-row input for the Qwen3.5-397B expert shapes (gate/up: out=1024,
  in=4096; down: out=4096, in=1024) and out=4096, in=4096.  Throughput = (packed weight + scales + biases bytes) /
  time.  "cold": cycling through enough distinct matrices (``cold_set_mb``, default 256 MB) that they do not fit in
  the last-level cache, the way streamed experts arrive; "hot": the same matrix again and again (cache resident).
  The headline ``gbps`` per bit width is the cold rate over a gate/up/down rotation; ``ratio`` = gbps /
  mem_read_gbps;
* optionally (``lm_head``) out=248320, in=4096 at 4 bits.

Timings: each call is timed on its own and the best of several repeats is kept per call (sum over calls), for the
memory read too (per 32 MB slice), so a shared, busy machine spoils single calls rather than whole passes.  Weights are random packed words with random
bf16 scales/biases: the kernel's speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

EXPERT_SHAPES = ((1024, 4096), (1024, 4096), (4096, 1024))  # gate, up, down of the 397B model
SQUARE = (4096, 4096)
LM_HEAD = (248320, 4096)


def _best_each(fns, repeats: int) -> float:
    """Run the sequence ``fns`` ``repeats`` times, timing each call; return sum_i min_r t[r][i].

    Robust on a shared machine: a preemption spoils one call of one repeat, not a whole pass.  When the sequence
    cycles through more data than the caches hold, every call is cold in every repeat, so this stays a cold time.
    """
    for f in fns[: min(len(fns), 4)]:
        f()
    return sum(best_times(fns, repeats))


def best_times(fns, repeats: int) -> list[float]:
    """Per call of ``fns``: the best of ``repeats`` timings, the whole sequence run in order each repeat."""
    best = [float("inf")] * len(fns)
    pc = time.perf_counter
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = pc()
            f()
            dt = pc() - t0
            if dt < best[i]:
                best[i] = dt
    return best


def measure_mem_read(nbytes: int = 1 << 30, repeats: int = 5, threads: int = 2, chunk: int = 32 << 20) -> dict:
    """Memory read bandwidth (GB/s) from summing a large float32 array (numpy, 1 thread; torch, ``threads``),
    timed per 32 MB slice (each slice is cold: the whole array is far larger than the caches)."""
    import torch

    a = np.ones(nbytes // 4, dtype=np.float32)
    n = chunk // 4
    np_s = _best_each([lambda i=i: np.add.reduce(a[i:i + n]) for i in range(0, a.size, n)], repeats)
    # the same numpy reduction on `threads` Python threads (numpy releases the GIL in reductions), each on its
    # share of the slice
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as ex:
        part = -(-n // threads)

        def par_sum(i):
            futs = [ex.submit(np.add.reduce, a[j:min(j + part, i + n)]) for j in range(i, i + n, part)]
            return sum(f.result() for f in futs)

        np_mt_s = _best_each([lambda i=i: par_sum(i) for i in range(0, a.size, n)], repeats)
    t = torch.from_numpy(a)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        th_s = _best_each([lambda i=i: t[i:i + n].sum() for i in range(0, a.size, n)], repeats)
    finally:
        torch.set_num_threads(old)
    res = {"numpy_sum_gbps": a.nbytes / np_s / 1e9, "numpy_sum_threads_gbps": a.nbytes / np_mt_s / 1e9,
           "torch_sum_gbps": a.nbytes / th_s / 1e9, "array_bytes": a.nbytes}
    peer = native_read_seconds(a, chunk, repeats, threads)
    if peer is not None:
        res["native_read_gbps"] = a.nbytes / peer / 1e9
    res["mem_read_gbps"] = max(v for k, v in res.items() if k.endswith("_gbps"))
    return res


def native_read_seconds(a: np.ndarray, chunk: int, repeats: int, threads: int) -> float | None:
    """The mat-vec's read-only peer (qmv.cpp ``fmoe_read_bytes``: the kernel's threads, chunks and prefetch, loads
    and XORs only) over ``a`` per ``chunk`` bytes, timed like the sums (best of ``repeats`` per slice, summed); None
    without the native library."""
    import ctypes

    from fmoe.kernels import native

    lib = native.load()
    if lib is None:
        return None
    out = ctypes.c_uint64()
    base, size = a.ctypes.data, a.nbytes // 64 * 64

    def read(off):
        rc = lib.fmoe_read_bytes(base + off, min(chunk, size - off) // 64 * 64, threads, ctypes.byref(out))
        if rc != 0:
            raise RuntimeError(f"fmoe_read_bytes returned {rc}")

    return _best_each([lambda off=off: read(off) for off in range(0, size, chunk)], repeats)


def _random_qweights(shapes, bits: int, group_size: int, rng: np.random.Generator):
    from fmoe.kernels.quant import QuantizedWeight, f32_to_bf16

    out = []
    for n, k in shapes:
        words = np.frombuffer(rng.bytes(n * k * bits // 8), dtype=np.uint32).reshape(n, k * bits // 32)
        sb = f32_to_bf16(rng.standard_normal((2, n, k // group_size), dtype=np.float32) * np.float32(0.01))
        out.append(QuantizedWeight(words, sb[0], sb[1], bits, group_size))
    return out


def bench_shapes(shapes, bits: int, group_size: int = 64, cold_set_mb: float = 256.0, repeats: int = 5,
                 dtype: str = "float32", seed: int = 0, backend: str = "auto") -> dict:
    """Cold and hot throughput of TorchQLinear over a rotation of ``shapes`` (a list of (out, in))."""
    import torch

    from fmoe.kernels.torch_qlinear import TorchQLinear

    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    rng = np.random.default_rng(seed)
    per_round = sum(n * k * bits / 8 for n, k in shapes)
    rounds = max(1, int(cold_set_mb * 1e6 // per_round))
    qs = _random_qweights(list(shapes) * rounds, bits, group_size, rng)
    t0 = time.perf_counter()
    layers = [TorchQLinear(q, tdtype, backend=backend) for q in qs]
    prepare_us = (time.perf_counter() - t0) / len(layers) * 1e6
    xs = {k: torch.randn(1, k, dtype=tdtype) for _, k in shapes}
    total_bytes = sum(layer.nbytes for layer in layers)

    cold_s = _best_each([lambda L=layer: L(xs[L.in_features]) for layer in layers], repeats)
    hot = layers[: len(shapes)]
    hot_bytes = sum(layer.nbytes for layer in hot)
    reps_hot = max(1, int(64e6 // hot_bytes))
    hot_s = _best_each([lambda L=layer: L(xs[L.in_features]) for layer in hot] * reps_hot, repeats)
    return {
        "gbps": total_bytes / cold_s / 1e9,
        "hot_gbps": hot_bytes * reps_hot / hot_s / 1e9,
        "us_per_matvec": cold_s / len(layers) * 1e6,
        "cold_set_bytes": total_bytes,
        "prepare_us": prepare_us,
        "backend": layers[0].backend,
    }


def bench_fused(bits: int = 4, group_size: int = 64, k: int = 10, cold_set_mb: float = 256.0, repeats: int = 5,
                seed: int = 1) -> dict:
    """A decode step's routed experts of the 397B shape (k experts: gate/up 1024x4096, down 4096x1024): one native
    call (``FusedExperts``: gate, up, SiLU*mul, down, weighted sum, one parallel region) vs the per-matrix path
    (3k TorchQLinear calls + torch ops), cold (rotating through ``cold_set_mb`` of distinct experts)."""
    import torch
    import torch.nn.functional as F

    from fmoe.kernels.torch_qlinear import FusedExperts, TorchQLinear

    rng = np.random.default_rng(seed)
    per_expert = sum(n * kk * bits / 8 for n, kk in EXPERT_SHAPES)
    sets = max(2, int(cold_set_mb * 1e6 // (per_expert * k)))
    qs = _random_qweights(list(EXPERT_SHAPES) * (k * sets), bits, group_size, rng)
    layers = [TorchQLinear(q) for q in qs]
    if layers[0].backend != "native":
        return {"error": "native kernel unavailable"}
    experts = [tuple(layers[3 * i:3 * i + 3]) for i in range(k * sets)]
    groups = [experts[i * k:(i + 1) * k] for i in range(sets)]
    x = torch.randn(1, EXPERT_SHAPES[0][1])
    w = [float(v) for v in rng.random(k)]
    nbytes = sum(m.nbytes for ew in groups[0] for m in ew)

    def fused(g):
        return FusedExperts.make(g)(x, w)

    def per_matrix(g):
        out = torch.zeros_like(x)
        for (gt, up, dn), wi in zip(g, w):
            out = out + dn(F.silu(gt(x)) * up(x)) * wi
        return out

    f_s = _best_each([lambda g=g: fused(g) for g in groups], repeats) / sets
    p_s = _best_each([lambda g=g: per_matrix(g) for g in groups], repeats) / sets
    return {"experts": k, "bytes_per_call": nbytes, "fused_gbps": nbytes / f_s / 1e9, "fused_ms": f_s * 1e3,
            "per_matrix_gbps": nbytes / p_s / 1e9, "per_matrix_ms": p_s * 1e3, "cold_sets": sets}


def bench_baselines(n: int = 1024, k: int = 4096, group_size: int = 64, cold_set_mb: float = 256.0,
                    repeats: int = 5, seed: int = 0) -> dict:
    """4-bit alternatives on the same shape: torch's int4 CPU kernel (after repacking), the torch dequantize +
    matmul reference path and mlx's CPU quantized_matmul.  Returns {name: {"gbps", "hot_gbps", "prepare_us"}}."""
    import torch

    from fmoe.kernels.quant import bf16_to_f32, unpack
    from fmoe.kernels.torch_qlinear import TorchQLinear

    rng = np.random.default_rng(seed)
    count = max(1, int(cold_set_mb * 1e6 // (n * k / 2)))
    qs = _random_qweights([(n, k)] * count, 4, group_size, rng)
    nbytes = qs[0].nbytes
    x = torch.randn(1, k)
    out: dict[str, dict] = {}

    def measure(name, fns, prepare_us):
        cold_s = _best_each(fns, repeats)
        reps = max(1, int(64e6 // nbytes))
        hot_s = _best_each([fns[0]] * reps, repeats)
        out[name] = {"gbps": nbytes * len(fns) / cold_s / 1e9, "hot_gbps": nbytes * reps / hot_s / 1e9,
                     "prepare_us": prepare_us}

    # torch int4: w = (q - 8) * scale + zero  ->  zero = bias + 8 * scale
    conv = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    mm = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
    if conv is not None and mm is not None:
        try:
            packed = []
            t0 = time.perf_counter()
            for q in qs:
                codes = torch.from_numpy(unpack(q.weight, 4).astype(np.int32))
                s = torch.from_numpy(bf16_to_f32(q.scales))
                b = torch.from_numpy(bf16_to_f32(q.biases))
                sz = torch.stack([s, b + 8 * s], dim=-1).transpose(0, 1).contiguous()  # [k/gs, n, 2]
                packed.append((conv(codes, 2), sz))
            prep = (time.perf_counter() - t0) / len(qs) * 1e6
            measure("torch_int4pack_mm", [lambda p=p: mm(x, p[0], group_size, p[1]) for p in packed], prep)
            xb = x.to(torch.bfloat16)
            packed_b = [(p[0], p[1].to(torch.bfloat16)) for p in packed]
            measure("torch_int4pack_mm_bf16", [lambda p=p: mm(xb, p[0], group_size, p[1]) for p in packed_b], prep)
            # the int4 packed weight has the same size as mlx's words; scale/zero pairs are float32 here
        except Exception as e:  # noqa: BLE001
            out["torch_int4pack_mm"] = {"error": f"{type(e).__name__}: {e}"}
    layers = [TorchQLinear(q, backend="torch") for q in qs[: max(1, count // 8)]]
    measure("torch_dequant_matmul", [lambda L=L: L(x) for L in layers], 0.0)
    try:
        import mlx.core as mx

        mq = [(mx.array(q.weight), mx.array(q.scales).view(mx.bfloat16), mx.array(q.biases).view(mx.bfloat16))
              for q in qs[: max(1, count // 8)]]
        xm = mx.array(x.numpy()).astype(mx.bfloat16)

        def mlx_fn(t):
            mx.eval(mx.quantized_matmul(xm, t[0], t[1], t[2], transpose=True, group_size=group_size, bits=4))

        measure("mlx_quantized_matmul_cpu", [lambda t=t: mlx_fn(t) for t in mq], 0.0)
    except Exception as e:  # noqa: BLE001
        out["mlx_quantized_matmul_cpu"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def run(json_out: bool = False, threads: int | None = None, group_size: int = 64, bits_list=(2, 3, 4, 5, 6, 8),
        quick: bool = False,
        lm_head: bool = True, square: bool = True, repeats: int | None = None, cold_set_mb: float | None = None,
        dtype: str = "float32", write_dir: str | os.PathLike | None = None, print_out: bool = True,
        baselines: bool = False) -> dict:
    """Measure memory bandwidth and the quantized mat-vec for each bit width; print JSON or a rich table."""
    import torch

    from fmoe.kernels import native

    threads = threads or native.threads()
    old_env = os.environ.get("FMOE_THREADS")
    os.environ["FMOE_THREADS"] = str(threads)  # the native kernels' thread count (native.threads())
    try:
        return _run(torch, native, json_out, threads, group_size, bits_list, quick, lm_head, square, repeats,
                    cold_set_mb, dtype, write_dir, print_out, baselines)
    finally:
        if old_env is None:
            os.environ.pop("FMOE_THREADS", None)
        else:
            os.environ["FMOE_THREADS"] = old_env


def _run(torch, native, json_out, threads, group_size, bits_list, quick, lm_head, square, repeats, cold_set_mb,
         dtype, write_dir, print_out, baselines) -> dict:
    torch.set_num_threads(threads)
    load_before = _loadavg()
    repeats = repeats or (3 if quick else 7)
    cold_set_mb = cold_set_mb or (96.0 if quick else 256.0)
    mem = measure_mem_read(nbytes=(256 << 20) if quick else (1 << 30), repeats=repeats, threads=threads)
    bw = mem["mem_read_gbps"]
    res: dict[str, Any] = {
        "mem_read_gbps": bw,
        "mem_read": mem,
        "threads": threads,
        "group_size": group_size,
        "dtype": dtype,
        "kernel": f"native-{native.kernel_isa()}" if native.load() else "torch",
        "kernel_isa": native.kernel_isa(),
        "command": " ".join(["fmoe bench kernels", *_ARGV]),
        "machine": {"cpu": native.cpu_name(), "cores": os.cpu_count(), "physical_cores": native.physical_cores(),
                    "machine": platform.machine(), "simd": _simd_flags(),
                    "cpu_flags": " ".join(sorted(native.cpu_flags())),
                    "variants_supported": native.supported_isas()},
        "bits": {},
    }
    for bits in bits_list:
        e = bench_shapes(EXPERT_SHAPES, bits, group_size, cold_set_mb, repeats, dtype)
        entry = {"gbps": e["gbps"], "ratio": e["gbps"] / bw, "hot_gbps": e["hot_gbps"],
                 "us_per_matvec": e["us_per_matvec"], "prepare_us": e["prepare_us"], "shapes": {}}
        shapes = [("gate_up_1024x4096", (1024, 4096)), ("down_4096x1024", (4096, 1024))]
        if square and not quick:
            shapes.append(("square_4096x4096", SQUARE))
        for name, shp in shapes:
            s = bench_shapes([shp], bits, group_size, cold_set_mb, repeats, dtype)
            entry["shapes"][name] = {"gbps": s["gbps"], "ratio": s["gbps"] / bw, "hot_gbps": s["hot_gbps"],
                                     "us_per_matvec": s["us_per_matvec"]}
        res["bits"][str(bits)] = entry
    if lm_head and not quick:
        s = bench_shapes([LM_HEAD], 4, group_size, 0.0, max(3, repeats // 2), dtype)
        res["lm_head_4bit"] = {"out": LM_HEAD[0], "in": LM_HEAD[1], "gbps": s["gbps"], "ratio": s["gbps"] / bw,
                               "ms_per_matvec": s["us_per_matvec"] / 1e3}
    if 4 in bits_list:
        res["experts_fused_4bit"] = bench_fused(4, group_size, 10, cold_set_mb, repeats)
        if "fused_gbps" in res["experts_fused_4bit"]:
            res["experts_fused_4bit"]["ratio"] = res["experts_fused_4bit"]["fused_gbps"] / bw
    res["machine"]["loadavg_1min_before_after"] = [load_before, _loadavg()]
    if baselines:
        res["baselines_4bit_1024x4096"] = bench_baselines(1024, 4096, group_size, cold_set_mb, repeats)
    four = res["bits"].get("4")
    if four:
        for b, e in res["bits"].items():
            e["rel_to_4bit"] = e["gbps"] / four["gbps"]
    if write_dir is not None:
        write_results(res, write_dir)
    if print_out:
        if json_out:
            print(json.dumps(res, indent=2))
        else:
            _print_table(res)
    return res


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _simd_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = set(line.split(":", 1)[1].split())
                    return " ".join(x for x in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8") if x in fl)
    except OSError:
        pass
    return ""


def to_markdown(res: dict) -> str:
    bw = res["mem_read_gbps"]
    lines = [
        "# Quantized mat-vec (batch 1) vs memory read bandwidth",
        "",
        f"Command: `{res.get('command', 'fmoe bench kernels')}`", "",
        f"Machine: {res['machine']['cpu']} ({res['machine'].get('simd', '')}), {res['machine']['cores']} cores, "
        f"1-min load average before/after {res['machine'].get('loadavg_1min_before_after')}; threads={res['threads']}; "
        f"group_size={res['group_size']}; activations {res['dtype']}; kernel `{res['kernel']}` "
        f"(variants this CPU runs: {', '.join(res['machine'].get('variants_supported', []))}).",
        "",
        f"Memory read bandwidth: **{bw:.1f} GB/s** = best of numpy sum 1 thread "
        f"{res['mem_read']['numpy_sum_gbps']:.1f}, numpy sum {res['threads']} threads "
        f"{res['mem_read']['numpy_sum_threads_gbps']:.1f}, torch sum {res['threads']} threads "
        f"{res['mem_read']['torch_sum_gbps']:.1f}, the kernel's read-only peer {res['threads']} threads "
        + (f"{res['mem_read']['native_read_gbps']:.1f}" if "native_read_gbps" in res["mem_read"] else "n/a (no native "
           "kernel)") + " (1 GiB float32 array, per 32 MB slice).",
        "",
        "Cold = rotating through more distinct matrices than the last-level cache holds; hot = one matrix repeated.",
        "Headline = cold, rotating gate/up/down (1024x4096, 1024x4096, 4096x1024).",
        "",
        "| bits | cold GB/s | ratio to mem | vs 4-bit | hot GB/s | us/matvec | 1024x4096 cold | 4096x1024 cold | 4096x4096 cold |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b, e in res["bits"].items():
        sh = e["shapes"]

        def g(name):
            return f"{sh[name]['gbps']:.1f}" if name in sh else "-"

        lines.append(
            f"| {b} | {e['gbps']:.1f} | {e['ratio']:.2f} | {e.get('rel_to_4bit', 1.0):.2f} | {e['hot_gbps']:.1f} | "
            f"{e['us_per_matvec']:.0f} | {g('gate_up_1024x4096')} | {g('down_4096x1024')} | {g('square_4096x4096')} |"
        )
    if "lm_head_4bit" in res:
        lm = res["lm_head_4bit"]
        lines += ["", f"lm_head-like 4-bit ({lm['out']}x{lm['in']}): {lm['gbps']:.1f} GB/s "
                      f"(ratio {lm['ratio']:.2f}), {lm['ms_per_matvec']:.1f} ms per mat-vec."]
    if "fused_gbps" in res.get("experts_fused_4bit", {}):
        fz = res["experts_fused_4bit"]
        lines += ["", f"A decode step's {fz['experts']} routed experts (4-bit, 397B shape, "
                      f"{fz['bytes_per_call'] / 1e6:.1f} MB, cold): one native call {fz['fused_gbps']:.1f} GB/s "
                      f"(ratio {fz['ratio']:.2f}, {fz['fused_ms']:.2f} ms) vs per-matrix calls "
                      f"{fz['per_matrix_gbps']:.1f} GB/s ({fz['per_matrix_ms']:.2f} ms)."]
    if "baselines_4bit_1024x4096" in res:
        lines += ["", "4-bit alternatives, 1024x4096 (GB/s of mlx-format bytes):", "",
                  "| approach | cold GB/s | hot GB/s | prepare us/matrix |", "|---|---:|---:|---:|"]
        for name, e in res["baselines_4bit_1024x4096"].items():
            if "error" in e:
                lines.append(f"| {name} | n/a | n/a | {e['error'][:60]} |")
            else:
                lines.append(f"| {name} | {e['gbps']:.2f} | {e['hot_gbps']:.2f} | {e['prepare_us']:.0f} |")
    lines += ["", f"Prepare cost (TorchQLinear construction, zero-copy): "
                  f"{max(e['prepare_us'] for e in res['bits'].values()):.0f} us per matrix at most.", ""]
    return "\n".join(lines)


def write_results(res: dict, out_dir: str | os.PathLike) -> None:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernels.json").write_text(json.dumps(res, indent=2) + "\n")
    (d / "kernels.md").write_text(to_markdown(res))


def _print_table(res: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(to_markdown(res))
        return
    bw = res["mem_read_gbps"]
    t = Table(title=f"quantized mat-vec, batch 1 ({res['kernel']}, {res['threads']} threads, "
                    f"group {res['group_size']}); memory read {bw:.1f} GB/s",
              caption="GB/s of packed weights+scales+biases; cold = > LLC working set; ratio = cold / memory read")
    for col in ("bits", "cold", "ratio", "/4-bit", "hot", "us", "1024x4096", "4096x1024", "4096x4096"):
        t.add_column(col, justify="right")
    for b, e in res["bits"].items():
        sh = e["shapes"]
        t.add_row(b, f"{e['gbps']:.1f}", f"{e['ratio']:.2f}", f"{e.get('rel_to_4bit', 1):.2f}", f"{e['hot_gbps']:.1f}",
                  f"{e['us_per_matvec']:.0f}",
                  *[f"{sh[n]['gbps']:.1f}" if n in sh else "-"
                    for n in ("gate_up_1024x4096", "down_4096x1024", "square_4096x4096")])
    c = Console()
    c.print(t)
    for name, e in res.get("baselines_4bit_1024x4096", {}).items():
        c.print(f"baseline {name}: " + (e["error"] if "error" in e else
                f"cold {e['gbps']:.2f} GB/s, hot {e['hot_gbps']:.2f} GB/s, prepare {e['prepare_us']:.0f} us"))
    fz = res.get("experts_fused_4bit", {})
    if "fused_gbps" in fz:
        c.print(f"{fz['experts']} experts 4-bit in one call: {fz['fused_gbps']:.1f} GB/s (ratio {fz['ratio']:.2f}, "
                f"{fz['fused_ms']:.2f} ms); per-matrix calls {fz['per_matrix_gbps']:.1f} GB/s "
                f"({fz['per_matrix_ms']:.2f} ms)")
    if "lm_head_4bit" in res:
        lm = res["lm_head_4bit"]
        c.print(f"lm_head 4-bit {lm['out']}x{lm['in']}: {lm['gbps']:.1f} GB/s (ratio {lm['ratio']:.2f}), "
                f"{lm['ms_per_matvec']:.1f} ms")


_ARGV: list[str] = []


def main(argv=None) -> int:
    import sys

    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    known, rest = device.parse_known_args(_ARGV)
    if known.device == "cuda":   # the GPU grouped mat-vec (fmoe/bench/cuda_kernels.py)
        from fmoe.bench import cuda_kernels

        return cuda_kernels.main(rest)
    _ARGV[:] = rest
    p = argparse.ArgumentParser(prog="fmoe bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU grouped mat-vec")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--threads", type=int, default=None, help="default: $FMOE_THREADS, else the physical cores")
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8], choices=(2, 3, 4, 5, 6, 8))
    p.add_argument("--quick", action="store_true", help="smaller cold set, fewer repeats, no 4096x4096/lm_head")
    p.add_argument("--no-lm-head", action="store_true")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--baselines", action="store_true", help="also time torch int4 / dequant+matmul / mlx (4-bit)")
    p.add_argument("--write", metavar="DIR", default=None, help="write kernels.json + kernels.md there")
    a = p.parse_args(argv)
    run(json_out=a.json, threads=a.threads, group_size=a.group_size, bits_list=tuple(a.bits), quick=a.quick,
        lm_head=not a.no_lm_head, repeats=a.repeats, dtype=a.dtype, write_dir=a.write, baselines=a.baselines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
