"""Per-call Python + ctypes overhead of ``TorchQLinear`` (CPU decode) and what it costs a one-matrix 4-bit mat-vec
(issue 14: one 2 MB expert matrix per call reached 0.40-0.50 of memory bandwidth on 16 cores, 10 experts in one
call 0.8-1.0).

For each thread count (``$FMOE_THREADS`` and torch's threads are set to it), in one run:

* ``mem_read_gbps``: :func:`fmoe.bench.kernels.measure_mem_read` (best of numpy 1 thread / numpy N threads / torch
  N threads summing a 1 GiB float32 array, per 32 MB slice), measured before and after the mat-vecs, the better
  of the two kept;
* call overhead on a tiny 4-bit matrix (64x256, group 64, 1-row float32 input): the mean time of a call, best of
  ``--rounds`` rounds of ``--calls`` calls, for three ways of calling the same kernel, alternated round by round:
  ``new`` = ``TorchQLinear.__call__`` as it is; ``old`` = the decode path as it was before (commit d21ae59:
  argtypes conversion, ``os.environ`` read per call, ``torch.empty(tuple, dtype=)``, ``.to(dtype)``), reproduced
  below by :class:`OldCall`; ``floor`` = the ctypes call alone with every argument prebuilt (no Python work
  around it).  Overhead = call - floor.  Also ``new_bf16`` / ``old_bf16``: a bfloat16 layer on a bfloat16 input
  (the input widened to float32 and the result cast back: part of the overhead);
* one 2 MB 4-bit matrix per call (1024x4096 and 4096x1024, group 64, float32 activations), cold: rotating through
  ``--cold-set-mb`` of distinct matrices (each call timed alone, best of ``--repeats`` per call as in
  :func:`fmoe.bench.kernels._best_each`, the three ways' passes alternated), GB/s of packed weights + scales +
  biases and the ratio to ``mem_read_gbps``, for ``new``, ``old`` and ``floor`` (the kernel with no Python around
  it, writing into one fixed output).

Run from the repository root:

    python3 bench/device/cpu_call_overhead.py --threads 1 2 4 8 16 [--json OUT.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from the repository root

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fmoe.bench.kernels import _random_qweights, best_times, measure_mem_read  # noqa: E402
from fmoe.kernels import native  # noqa: E402
from fmoe.kernels import torch_qlinear as tq  # noqa: E402
from fmoe.kernels.torch_qlinear import TorchQLinear  # noqa: E402

SHAPES = {"gate_up_1024x4096": (1024, 4096), "down_4096x1024": (4096, 1024)}
TINY = (64, 256)


def _old_threads() -> int:
    """native.threads() as it was: os.environ read and parsed on every call."""
    env = os.environ.get("FMOE_THREADS", "").strip()
    if env:
        return max(1, int(env))
    global _old_cores
    if _old_cores is None:
        _old_cores = native.physical_cores()
    return _old_cores


_old_cores: int | None = None


class OldCall:
    """The CPU decode path of ``TorchQLinear.__call__`` before issue 14's change (commit d21ae59), for A/B runs: the
    same attributes as that class read per call, the argtypes-declared ``fmoe_qmv``, Python ints converted by
    ctypes on every call."""

    def __init__(self, layer: TorchQLinear) -> None:
        self._lib = layer._lib
        self._fn = layer._lib.fmoe_qmv
        self._wp, self._sp, self._bp, self._scales_bf16 = layer._wp, layer._sp, layer._bp, layer._scales_bf16
        self.out_features, self.in_features = layer.out_features, layer.in_features
        self.bits, self.group_size, self.mode, self.dtype = layer.bits, layer.group_size, layer.mode, layer.dtype
        self.nbytes = layer.nbytes
        self._check_x = layer._check_x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.in_features:
            self._check_x(x)
        lead = x.shape[:-1]
        m = x.numel() // self.in_features
        if self._lib is not None and m <= tq.NATIVE_MAX_ROWS and x.device.type == "cpu":
            if x.dtype != torch.float32 or not x.is_contiguous():
                x = x.to(torch.float32).contiguous()
            y = torch.empty((*lead, self.out_features), dtype=torch.float32)
            if m:
                if tq.PROFILE is None:
                    self._run(x, y, m, self.mode)
                else:
                    t0 = time.perf_counter()
                    self._run(x, y, m, self.mode)
                    tq.PROFILE["kernel_s"] += time.perf_counter() - t0
                    tq.PROFILE["calls"] += 1
                    tq.PROFILE["bytes"] += self.nbytes
            return y if self.dtype == torch.float32 else y.to(self.dtype)
        raise RuntimeError("OldCall reproduces the CPU decode path only")

    def _run(self, x32: torch.Tensor, y: torch.Tensor, m: int, mode: int) -> None:
        rc = self._fn(
            self._wp, self._sp, self._bp, self._scales_bf16, x32.data_ptr(), y.data_ptr(),
            self.out_features, self.in_features, m, self.in_features, self.out_features,
            self.bits, self.group_size, _old_threads(), mode,
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"fmoe_qmv failed with code {rc}")


def floor_call(layer: TorchQLinear, x: torch.Tensor):
    """A zero-argument callable running the layer's kernel on x into a fixed output, every argument prebuilt: the
    ctypes call and the kernel, nothing else."""
    lib = layer._lib
    raw = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(lib.fmoe_qmv, ctypes.c_void_p).value)
    y = torch.empty(1, layer.out_features)
    P, I64 = ctypes.c_void_p, ctypes.c_int64
    n, k = I64(layer.out_features), I64(layer.in_features)
    args = (P(layer._wp), P(layer._sp), P(layer._bp), layer._scales_bf16, P(x.data_ptr()), P(y.data_ptr()), n, k,
            1, k, n, layer.bits, layer.group_size, native.threads(), layer.mode)

    def f():
        return raw(*args)

    f.keep = (x, y, layer)
    return f


def _mean_call_us(f, calls: int) -> float:
    pc = time.perf_counter_ns
    t0 = pc()
    for _ in range(calls):
        f()
    return (pc() - t0) / calls / 1e3


def measure_overhead(calls: int, rounds: int) -> dict:
    rng = np.random.default_rng(7)
    q = _random_qweights([TINY], 4, 64, rng)[0]
    layer = TorchQLinear(q, backend="native")
    lb = TorchQLinear(q, torch.bfloat16, backend="native")
    x = torch.randn(1, TINY[1])
    xb = x.to(torch.bfloat16)
    ways = {"new": lambda: layer(x), "old": (lambda o=OldCall(layer): o(x)), "floor": floor_call(layer, x),
            "new_bf16": lambda: lb(xb), "old_bf16": (lambda o=OldCall(lb): o(xb))}
    assert torch.equal(ways["new"](), ways["old"]()) and torch.equal(ways["new_bf16"](), ways["old_bf16"]())
    for f in ways.values():
        _mean_call_us(f, max(1, calls // 10))
    best = {k: float("inf") for k in ways}
    for _ in range(rounds):  # alternated: a busy minute spoils all three alike
        for k, f in ways.items():
            best[k] = min(best[k], _mean_call_us(f, calls))
    return {"matrix": f"{TINY[0]}x{TINY[1]} 4-bit g64", "call_us": best,
            "overhead_us": {k: best[k] - best["floor"] for k in ("new", "old", "new_bf16", "old_bf16")}}


def _best_each_alternated(ways: dict, repeats: int) -> dict:
    """:func:`fmoe.bench.kernels._best_each` for several ways of making the same calls, their cold passes
    alternated (new, old, floor, new, old, ...) so that a busy minute on a shared host spoils all of them alike:
    {way: sum over calls of the best time of that call}."""
    for fns in ways.values():
        for f in fns[: min(len(fns), 4)]:
            f()
    flat = [f for fns in ways.values() for f in fns]
    best, out, i = best_times(flat, repeats), {}, 0
    for k, fns in ways.items():
        out[k] = sum(best[i:i + len(fns)])
        i += len(fns)
    return out


def measure_matvec(name: str, shape, cold_set_mb: float, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n, k = shape
    count = max(2, int(cold_set_mb * 1e6 // (n * k / 2)))
    layers = [TorchQLinear(q, backend="native") for q in _random_qweights([shape] * count, 4, 64, rng)]
    nbytes = sum(L.nbytes for L in layers)
    x = torch.randn(1, k)
    ways = {
        "new": [lambda L=L: L(x) for L in layers],
        "old": [lambda o=OldCall(L): o(x) for L in layers],
        "floor": [floor_call(L, x) for L in layers],
    }
    assert torch.equal(layers[0](x), OldCall(layers[0])(x))
    secs = _best_each_alternated(ways, repeats)
    return {"shape": name, "matrix_bytes": nbytes // count, "matrices": count,
            "gbps": {k: nbytes / s / 1e9 for k, s in secs.items()},
            "us_per_matvec": {k: s / count * 1e6 for k, s in secs.items()}}


def run(threads_list, calls: int, rounds: int, repeats: int, cold_set_mb: float, mem_bytes: int) -> dict:
    if native.load() is None:
        raise SystemExit(f"native kernel unavailable: {native.load_error()}")
    out = {"command": "python3 bench/device/cpu_call_overhead.py " + " ".join(sys.argv[1:]),
           "cpu": native.cpu_name(), "cpus": os.cpu_count(), "physical_cores": native.physical_cores(),
           "machine": platform.machine(), "kernel_isa": native.kernel_isa(), "torch": torch.__version__,
           "python": platform.python_version(), "runs": []}
    old_env = os.environ.get("FMOE_THREADS")
    try:
        for t in threads_list:
            os.environ["FMOE_THREADS"] = str(t)
            torch.set_num_threads(t)
            mem = measure_mem_read(nbytes=mem_bytes, repeats=repeats, threads=t)
            r = {"threads": t, "mem_read": [mem], "overhead": measure_overhead(calls, rounds), "matvec": []}
            for i, (name, shape) in enumerate(SHAPES.items()):
                r["matvec"].append(measure_matvec(name, shape, cold_set_mb, repeats, seed=i))
            # once more after the mat-vecs: the better of the two (a busy shared host spoils one, not both)
            r["mem_read"].append(measure_mem_read(nbytes=mem_bytes, repeats=repeats, threads=t))
            r["mem_read_gbps"] = bw = max(m["mem_read_gbps"] for m in r["mem_read"])
            for mv in r["matvec"]:
                mv["ratio"] = {k: g / bw for k, g in mv["gbps"].items()}
            out["runs"].append(r)
            _print_run(r)
    finally:
        if old_env is None:
            os.environ.pop("FMOE_THREADS", None)
        else:
            os.environ["FMOE_THREADS"] = old_env
    return out


def _print_run(r: dict) -> None:
    o = r["overhead"]
    c, ov = o["call_us"], o["overhead_us"]
    mems = " / ".join(f"{m['mem_read_gbps']:.1f}" for m in r["mem_read"])
    print(f"threads={r['threads']}: memory read {r['mem_read_gbps']:.1f} GB/s (before / after: {mems}); "
          f"call on {o['matrix']}: "
          f"new {c['new']:.2f} us, old {c['old']:.2f} us, floor (ctypes + kernel) {c['floor']:.2f} us -> "
          f"overhead new {ov['new']:.2f} us, old {ov['old']:.2f} us; bf16 layer and input: "
          f"new {ov['new_bf16']:.2f} us, old {ov['old_bf16']:.2f} us", flush=True)
    for mv in r["matvec"]:
        g, ra, us = mv["gbps"], mv["ratio"], mv["us_per_matvec"]
        parts = [f"{k} {g[k]:.1f} GB/s = {ra[k]:.2f} of mem ({us[k]:.1f} us)" for k in ("new", "old", "floor")]
        print(f"  {mv['shape']} 4-bit ({mv['matrix_bytes'] / 1e6:.2f} MB, cold over {mv['matrices']}): "
              + ", ".join(parts), flush=True)


def to_markdown(res: dict) -> str:
    lines = [f"Command: `{res['command']}`", "",
             f"CPU: {res['cpu']} ({res['cpus']} CPUs, {res['physical_cores']} physical cores), kernel "
             f"`{res['kernel_isa']}`, torch {res['torch']}, Python {res['python']}.", "",
             "| threads | mem read GB/s | call us new / old / floor | overhead us new / old (bf16: new / old) | matrix "
             "| GB/s new / old / floor | ratio to mem new / old / floor | us per mat-vec new / old / floor |",
             "|---:|---:|---|---|---|---|---|---|"]
    for r in res["runs"]:
        c, ov = r["overhead"]["call_us"], r["overhead"]["overhead_us"]
        for i, mv in enumerate(r["matvec"]):
            g, ra, us = mv["gbps"], mv["ratio"], mv["us_per_matvec"]
            head = (f"| {r['threads']} | {r['mem_read_gbps']:.1f} | {c['new']:.2f} / {c['old']:.2f} / {c['floor']:.2f} "
                    f"| {ov['new']:.2f} / {ov['old']:.2f} ({ov['new_bf16']:.2f} / {ov['old_bf16']:.2f}) ") \
                if i == 0 else "| | | | "
            lines.append(head + f"| {mv['shape']} | {g['new']:.1f} / {g['old']:.1f} / {g['floor']:.1f} "
                         f"| {ra['new']:.2f} / {ra['old']:.2f} / {ra['floor']:.2f} "
                         f"| {us['new']:.1f} / {us['old']:.1f} / {us['floor']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--calls", type=int, default=20000, help="calls per round on the tiny matrix")
    p.add_argument("--rounds", type=int, default=7, help="alternated rounds on the tiny matrix (best kept)")
    p.add_argument("--repeats", type=int, default=7, help="cold passes per way, alternated (best per call kept)")
    p.add_argument("--cold-set-mb", type=float, default=256.0, help="distinct matrices rotated through, per shape")
    p.add_argument("--mem-mb", type=int, default=1024, help="array summed for the memory read bandwidth")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON")
    p.add_argument("--markdown", metavar="OUT", default=None, help="also write a markdown table")
    a = p.parse_args(argv)
    res = run(a.threads, a.calls, a.rounds, a.repeats, a.cold_set_mb, a.mem_mb << 20)
    md = to_markdown(res)
    print()
    print(md)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
