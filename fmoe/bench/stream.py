"""``fmoe bench stream``: storage-level numbers for expert streaming, all measured in one run.

1. builds (or reuses) a synthetic 397B-shaped model in the streaming layout (``fmoe synth``);
2. disk read bandwidth: O_DIRECT reads of whole expert regions of the same files, ``io_threads`` in flight
   (``disk_read_gbps``), and large sequential O_DIRECT reads (``disk_seq_gbps``);
3. memory read bandwidth (``mem_read_gbps``: numpy reductions over 512 MiB, 1 and 2 threads, best);
4. the expert store reading random top-k expert sets per layer, cold (``posix_fadvise(DONTNEED)`` on every file
   first), in a child process placed in a memory cgroup (v1) capped at ``--memory-cap`` when asked; the child first
   loads every non-expert weight (as the engine would) so its peak RSS is comparable to a real run.

``fraction_of_bound`` (I/O level) = (expert bytes read from disk / disk_read_gbps) / wall time of the store loop.
With ``--touch on`` the loop also reads every returned weight once (a stand-in for the memory-bound expert matmuls)
and the bound adds ``bytes touched / mem_read_gbps``.

    fmoe bench stream [--layers N] [--experts E] [--bits B] [--memory-cap SIZE] [--overlap on|off] [--json]
    fmoe bench stream --device cuda [--gpu-memory-budget 24GB] [--cold] ...    # GPU engine: fmoe/bench/stream_cuda.py
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fmoe.storage.expert_store import budget_for_memory, memory_floor, resident_estimate
from fmoe.storage.osio import open_uncached

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def parse_size(s: str | int | None) -> int | None:
    from fmoe.units import parse_size as parse
    if s is None:
        return None
    try:
        return parse(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _drop_cache(files) -> bool:
    """Evict ``files`` from the page cache (False where the OS has no posix_fadvise: the run is then not cold)."""
    from fmoe.storage.osio import drop_from_page_cache
    return all([drop_from_page_cache(f) for f in files])


class _RssSampler:
    """Peak of each part of this process's RSS (/proc/self/status RssAnon, RssShmem: the read buffers are shared
    anonymous mappings, RssFile), sampled every 10 ms on a thread: where the memory went."""

    KEYS = ("VmRSS", "RssAnon", "RssShmem", "RssFile")

    def __init__(self):
        self.peak = {k: 0 for k in self.KEYS}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="fmoe-rss")
        self._t.start()

    def sample(self) -> dict:
        now = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            k = line.split(":", 1)[0]
            if k in self.KEYS:
                now[k] = int(line.split()[1]) * 1024
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)
        return now

    def _run(self):
        while not self._stop.wait(0.01):
            self.sample()

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        self.sample()
        return {f"peak_{k}": v for k, v in self.peak.items()}


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------------------------------------ bandwidths


def disk_bandwidth(layout, threads: int, seconds: float = 4.0, seed: int = 0, sequential: bool = True) -> dict:
    """O_DIRECT reads of random whole expert regions (what a cold cache miss costs), ``threads`` in flight,
    plus sequential 16 MiB O_DIRECT reads."""
    rng = np.random.default_rng(seed)
    layers = layout.layers
    stride = layers[0].stride
    fds = [open_uncached(L.file) for L in layers]
    try:
        def random_reads(qd: int, secs: float) -> float:
            jobs = [(int(rng.integers(0, len(layers))), int(rng.integers(0, layers[0].num_experts)))
                    for _ in range(100000)]
            lock = threading.Lock()
            it = iter(jobs)
            total = [0]
            stop = time.perf_counter() + secs

            def worker():
                buf = mmap.mmap(-1, stride)
                n = 0
                while time.perf_counter() < stop:
                    with lock:
                        layer, e = next(it)
                    n += os.preadv(fds[layer], [buf], layers[layer].offsets[e])
                with lock:
                    total[0] += n

            t0 = time.perf_counter()
            ts = [threading.Thread(target=worker) for _ in range(qd)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return total[0] / (time.perf_counter() - t0) / 1e9

        by_qd = {qd: random_reads(qd, seconds / 4) for qd in (1, 4, threads, 2 * threads)}
        if not sequential:
            return {"disk_read_gbps": max(by_qd.values()),
                    "disk_read_gbps_by_qd": {str(k): round(v, 3) for k, v in by_qd.items()}}
        # sequential, 16 MiB blocks, 4 in flight over the first files
        blk = 16 << 20
        offs = [(fd, o) for fd, L in zip(fds, layers) for o in range(0, L.num_experts * L.stride - blk + 1, blk)]
        lock, it, total = threading.Lock(), iter(offs), [0]
        stop = time.perf_counter() + seconds / 2

        def seq():
            buf = mmap.mmap(-1, blk)
            n = 0
            while time.perf_counter() < stop:
                with lock:
                    x = next(it, None)
                if x is None:
                    break
                n += os.preadv(x[0], [buf], x[1])
            with lock:
                total[0] += n

        t0 = time.perf_counter()
        ts = [threading.Thread(target=seq) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        seq_gbps = total[0] / (time.perf_counter() - t0) / 1e9
    finally:
        for fd in fds:
            os.close(fd)
    return {"disk_read_gbps": max(by_qd.values()), "disk_read_gbps_at_threads": by_qd[threads], "disk_read_gbps_by_qd": {str(k): round(v, 3) for k, v in by_qd.items()},
            "disk_seq_gbps": seq_gbps}


def replay_bandwidth(layout, route: np.ndarray, threads: int) -> float:
    """GB/s of a bare O_DIRECT replay of the reads ``route`` asks for ([tokens, layers, k]), ``threads`` in flight,
    reused buffers: the disk's bound for exactly this access pattern, measured next to the store run."""
    layers = layout.layers
    fds = [open_uncached(L.file) for L in layers]
    jobs = [(l, int(e)) for t in range(route.shape[0]) for l in range(route.shape[1]) for e in route[t, l]]
    lock, it, total = threading.Lock(), iter(jobs), [0]

    def worker():
        buf = mmap.mmap(-1, layers[0].stride)
        n = 0
        while True:
            with lock:
                x = next(it, None)
            if x is None:
                break
            n += os.preadv(fds[x[0]], [buf], layers[x[0]].offsets[x[1]])
        with lock:
            total[0] += n

    try:
        t0 = time.perf_counter()
        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return total[0] / (time.perf_counter() - t0) / 1e9
    finally:
        for fd in fds:
            os.close(fd)


def memory_bandwidth(nbytes: int = 512 << 20) -> dict:
    a = np.ones(nbytes // 8, np.uint64)
    a.sum()

    def best(fn, reps=4):
        t = min(_timed(fn) for _ in range(reps))
        return nbytes / t / 1e9

    one = best(lambda: a.sum())
    half = a.size // 2
    with ThreadPoolExecutor(2) as pool:
        two = best(lambda: list(pool.map(lambda s: s.sum(), (a[:half], a[half:]))))
    b = np.empty_like(a)
    cp = best(lambda: np.copyto(b, a))
    del a, b
    return {"mem_read_gbps": max(one, two), "mem_read_gbps_1thread": one, "mem_read_gbps_2threads": two,
            "mem_copy_gbps": cp}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ store loop (child)


def routing(num_tokens: int, num_layers: int, num_experts: int, k: int, kind: str, seed: int) -> np.ndarray:
    """[tokens, layers, k] expert ids: uniform random sets, or Zipf-skewed (s=1) per layer."""
    rng = np.random.default_rng(seed)
    out = np.empty((num_tokens, num_layers, k), np.int64)
    if kind == "uniform":
        for t in range(num_tokens):
            for l in range(num_layers):
                out[t, l] = rng.choice(num_experts, k, replace=False)
        return out
    ranks = 1.0 / np.arange(1, num_experts + 1) ** 1.0
    p = ranks / ranks.sum()
    perms = [rng.permutation(num_experts) for _ in range(num_layers)]
    for t in range(num_tokens):
        for l in range(num_layers):
            out[t, l] = perms[l][rng.choice(num_experts, k, replace=False, p=p)]
    return out


def _join_cgroup(cg: str | None) -> None:
    if cg:
        (Path(cg) / "cgroup.procs").write_text(str(os.getpid()))


def worker(spec: dict) -> dict:
    """Runs in the (capped) child: load non-expert weights, then the store loop."""
    _join_cgroup(spec.get("cgroup"))
    sampler = _RssSampler()
    from fmoe.storage.stream_layout import open_streaming
    checkpoint = open_streaming(spec["model"])
    held, ne_bytes = [], 0
    t0 = time.perf_counter()
    if spec["load_non_expert"]:
        for name in checkpoint.non_expert_names():
            x = checkpoint.load(name)
            ne_bytes += x.nbytes
            held.append(x)
    t_ne = time.perf_counter() - t0
    rss_after_ne = _vm_hwm()
    files = [L.file for L in checkpoint.layout.layers]
    _drop_cache(files)
    store = checkpoint.expert_source(mode=spec["mode"], memory_budget=spec["budget"], verify=spec["verify"],
                             io_threads=spec["io_threads"], policy=spec["policy"])
    route = np.array(spec["route"], dtype=np.int64)
    T, Lr, k = route.shape
    touched = 0
    sink = 0
    t0 = time.perf_counter()
    token_s = []
    for t in range(T):
        ts = time.perf_counter()
        for layer in range(Lr):
            if spec["overlap"]:
                nt, nl = (t, layer + 1) if layer + 1 < Lr else (t + 1, 0)
                if nt < T:
                    store.prefetch(nl, route[nt, nl].tolist())
            ws = store.get(layer, route[t, layer].tolist())
            if spec["touch"]:
                for trip in ws:
                    for q in trip:
                        sink += int(q.weight.view(np.uint64).sum(dtype=np.uint64) & 1)
                        touched += q.weight.nbytes + q.scales.nbytes + q.biases.nbytes
            del ws
        token_s.append(time.perf_counter() - ts)
    wall = time.perf_counter() - t0
    rss_parts = sampler.stop()
    s = store.stats()
    est = resident_estimate(checkpoint.layout, s["memory_budget"], spec["io_threads"], k, ne_bytes)
    est["overhead"] = 100 << 20                      # no torch in this process
    est["total"] = sum(v for kk, v in est.items() if kk != "total")
    store.close()
    expert_nbytes = checkpoint.layout.layers[0].sizes[0]
    return {"wall_s": wall, "tokens": T, "token_s": token_s, "stats": s, "non_expert_bytes": ne_bytes,
            "non_expert_load_s": t_ne, "rss_after_non_expert": rss_after_ne, "peak_rss_bytes": _vm_hwm(),
            "rss_parts": rss_parts, "resident_estimate": est,
            "delivered_bytes": T * Lr * k * expert_nbytes, "touched_bytes": touched, "sink": sink}


def model_worker(spec: dict) -> dict:
    """Runs in the (capped) child: the real engine decoding greedily with experts streamed from the layout."""
    _join_cgroup(spec.get("cgroup"))
    sampler = _RssSampler()
    import torch

    from fmoe.engine.generate import Generation
    from fmoe.engine.model import Model

    torch.set_num_threads(spec.get("threads") or os.cpu_count() or 1)
    t0 = time.perf_counter()
    m = Model.load(spec["model"], backend="torch", dtype="bfloat16",
                   experts_per_token=spec.get("top_k"),
                   stream={"mode": spec["mode"], "memory_budget": spec["budget"], "verify": spec["verify"],
                           "io_threads": spec["io_threads"], "policy": spec["policy"]},
                   predict_experts=spec["overlap"])
    load_s = time.perf_counter() - t0
    rss_after_ne = _vm_hwm()
    _drop_cache([L.file for L in m.checkpoint.layout.layers])
    store = m.experts.store
    prompt = [int(np.random.default_rng(spec["seed"]).integers(0, 1000))]   # 1 token: a short prefill
    cache = m.new_cache()
    m.forward(prompt, cache)                       # prefill (not timed as decode)
    store.reset_stats()
    m.moe_stats.__init__()
    t1 = time.perf_counter()
    g = Generation(m, prompt + [7], max_tokens=spec["tokens"], cache=cache)
    toks = [st.token_id for st in g]
    wall = time.perf_counter() - t1
    peak_rss = _vm_hwm()                          # before anything below allocates
    rss_parts = sampler.stop()
    s = m.stats()
    cfg = m.cfg
    expert_nbytes = m.checkpoint.layout.layers[0].sizes[0]
    T = len(toks)
    # bytes a decode step touches in memory: every non-expert weight except the embedding table, + the used experts
    ne_touched = os.path.getsize(m.checkpoint.layout.non_expert_file) - _embed_bytes(m)
    return {"wall_s": wall, "tokens": T, "stats": s.to_dict(), "load_s": load_s, "rss_after_non_expert": rss_after_ne,
            "peak_rss_bytes": peak_rss, "rss_parts": rss_parts,
            "resident_estimate": resident_estimate(m.checkpoint.layout, s.store.get("memory_budget", 0),
                                                   spec["io_threads"], m.experts_per_token),
            "non_expert_bytes": os.path.getsize(m.checkpoint.layout.non_expert_file),
            "delivered_bytes": s.expert_calls * expert_nbytes,
            "touched_bytes": T * ne_touched + s.expert_calls * expert_nbytes,
            "finite": bool(np.isfinite(m.ops.to_numpy(g.model.forward([toks[-1]], cache))).all()),
            "distinct_tokens": len(set(toks)), "top_k": m.experts_per_token, "layers": cfg.num_hidden_layers}


def _embed_bytes(m) -> int:
    """Stored bytes of the embedding table, from the manifest (loading it again would add to the peak RSS)."""
    ne = m.checkpoint.layout.non_expert
    info = ne.get("embed_tokens.weight") or ne.get("embed_tokens")
    hdr = m.checkpoint._st.header if m.checkpoint._st is not None else None
    if info is None or hdr is None:
        return 0
    return sum(hdr[n]["data_offsets"][1] - hdr[n]["data_offsets"][0] for n in info["stored"] if n in hdr)


def ttft(model_dir: str, tokens: int, mode: str = "page-cache", budget: int | None = None, seed: int = 0) -> dict:
    """Time to first token of a ``tokens``-long prompt: batched prefill (chunks of 512: each needed expert read once
    and applied to all its tokens) vs token-by-token, same model, same expert store settings, page cache warm."""
    from fmoe.engine.model import Model

    m = Model.load(model_dir, backend="torch",
                   stream={"mode": mode, "memory_budget": budget} if mode else None)
    vocab = min(m.cfg.vocab_size, 1000)
    ids = [int(x) for x in np.random.default_rng(seed).integers(0, vocab, size=tokens)]
    m.forward(ids[:8], m.new_cache())                       # warm-up: kernels built, files opened
    out = {}
    for name, chunk in (("batched", 512), ("token_by_token", 1)):
        cache = m.new_cache()
        before = m.stats().bytes_read
        t0 = time.perf_counter()
        for i in range(0, tokens, chunk):
            m.forward(ids[i:i + chunk], cache)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        out[f"{name}_expert_bytes"] = m.stats().bytes_read - before
    out["speedup"] = round(out["token_by_token_s"] / out["batched_s"], 1)
    out.update(tokens=tokens, model=str(model_dir), mode=mode)
    return out


# ------------------------------------------------------------------------------------------------ driver


class _Cgroup:
    def __init__(self, limit: int | None):
        self.path = None
        if limit is None:
            return
        if not CGROUP_ROOT.is_dir():
            raise SystemExit("--memory-cap needs cgroup v1 memory controller at /sys/fs/cgroup/memory (and root)")
        self.path = CGROUP_ROOT / f"fmoe-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit))
        try:
            (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        except OSError:
            pass

    def max_usage(self) -> int | None:
        if self.path is None:
            return None
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def failcnt(self) -> int | None:
        return None if self.path is None else int((self.path / "memory.failcnt").read_text())

    def close(self):
        if self.path is not None:
            for _ in range(50):
                try:
                    self.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            self.path = None


def run_child(spec: dict, cap: int | None) -> dict:
    cg = _Cgroup(cap)
    try:
        spec = dict(spec, cgroup=str(cg.path) if cg.path else None)
        with tempfile.TemporaryDirectory() as td:
            sp, rp = Path(td) / "spec.json", Path(td) / "result.json"
            sp.write_text(json.dumps(spec))
            r = subprocess.run([sys.executable, "-m", "fmoe.bench.stream", "--_worker", str(sp), str(rp)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"bench worker failed (rc {r.returncode}; killed by the memory cap?):\n"
                                   f"{r.stderr[-3000:]}")
            res = json.loads(rp.read_text())
        res["cgroup_max_usage_bytes"] = cg.max_usage()
        res["cgroup_failcnt"] = cg.failcnt()
        return res
    finally:
        cg.close()


def summarize(res: dict, bw: dict, spec: dict) -> dict:
    s = res["stats"]
    wall = res["wall_s"]
    io_bound = s["bytes_read"] / (bw["disk_read_gbps"] * 1e9)
    mem_bound = res["touched_bytes"] / (bw["mem_read_gbps"] * 1e9)
    bound_s = max(io_bound, mem_bound) if spec["overlap"] else io_bound + mem_bound
    out = {
        "engine": spec.get("engine", "store"),
        "tok_s": round(res["tokens"] / wall, 4) if wall else None,
        "bound_tok_s": round(res["tokens"] / bound_s, 4) if bound_s else None,
        "mode": spec["mode"], "overlap": spec["overlap"], "policy": spec["policy"], "routing": spec["routing"],
        "memory_budget": s["memory_budget"], "tokens": res["tokens"], "wall_s": round(wall, 3),
        "s_per_token": round(wall / res["tokens"], 4),
        "gbps": round(res["delivered_bytes"] / wall / 1e9, 3),                 # expert bytes served per second
        "disk_gbps": round(s["bytes_read"] / wall / 1e9, 3),                   # bytes read from disk per second
        "bytes_read": s["bytes_read"], "reads": s["reads"],
        "bound_s": round(bound_s, 3), "io_bound_s": round(io_bound, 3), "mem_bound_s": round(mem_bound, 3),
        "fraction_of_bound": round(bound_s / wall, 3) if wall else None,
        "prediction_hit_rate": s.get("prediction_hit_rate"),
        "cache_hit_rate": round(s["cache_hit_rate"], 4),
        "cache_hit_rate_excl_prefetch": round(s["cache_hit_rate_excl_prefetch"], 4), "prefetch_issued": s["prefetch_issued"],
        "prefetch_used": s["prefetch_used"], "io_wait_s": round(s["io_wait_s"], 3),
        "peak_resident_bytes": s["peak_resident_bytes"], "peak_rss_bytes": res["peak_rss_bytes"],
        "non_expert_bytes": res["non_expert_bytes"], "rss_after_non_expert": res["rss_after_non_expert"],
        # the documented resident formula (fmoe.storage.expert_store.resident_estimate) is the limit
        "rss_limit_bytes": res["resident_estimate"]["total"], "resident_estimate": res["resident_estimate"],
        "rss_parts": res.get("rss_parts"),
        "cgroup_max_usage_bytes": res["cgroup_max_usage_bytes"], "cgroup_failcnt": res.get("cgroup_failcnt"),
    }
    out["rss_within_limit"] = out["peak_rss_bytes"] <= out["rss_limit_bytes"]
    return out


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="fmoe bench stream", description=__doc__.splitlines()[0])
    p.add_argument("--like", default="qwen3.5-397b-a17b")
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    p.add_argument("--top-k", type=int, default=None, help="experts per token (default: the model's, 10 for 397B)")
    p.add_argument("--tokens", type=int, default=12)
    p.add_argument("--engine", choices=("model", "store"), default="model",
                   help="model: the engine decodes with streamed experts (tok/s); store: the expert store alone "
                        "replays random routing")
    p.add_argument("--memory-cap", type=parse_size, default=None, help="cgroup memory cap of the store process")
    p.add_argument("--budget", type=parse_size, default=None,
                   help="expert cache budget (default: the largest that fits under --memory-cap by the resident "
                        "formula of docs/reference/streaming-format.md, or 1 GiB without a cap)")
    p.add_argument("--mode", choices=("page-cache", "direct", "both"), default="both")
    p.add_argument("--overlap", choices=("on", "off", "both"), default="both",
                   help="prefetch the next layer's experts (oracle routing) while waiting for this one")
    p.add_argument("--policy", choices=("lru", "lfu", "both"), default="lru")
    p.add_argument("--routing", choices=("uniform", "zipf", "router"), default="uniform",
                   help="expert ids per token and layer: uniform or Zipf random; router (--device cuda only): the "
                        "model's own router")
    p.add_argument("--touch", choices=("on", "off"), default="off")
    p.add_argument("--io-threads", type=int, default=8)
    p.add_argument("--verify", action="store_true")
    p.add_argument("--no-non-expert", action="store_true", help="do not load non-expert weights in the child")
    p.add_argument("--model-dir", default=None, help="where the synthetic model lives (default under /tmp)")
    p.add_argument("--cleanup", action="store_true", help="delete the synthetic model at the end")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ttft-tokens", type=int, default=None,
                   help="only measure time to first token of a prompt this long, batched vs token-by-token "
                        "(on --model-dir, or the synthetic model)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the engine decodes on the GPU with experts in tiers (VRAM, host RAM, disk) against a "
                        "tiered bound measured in the same run (fmoe/bench/stream_cuda.py)")
    p.add_argument("--gpu-memory-budget", type=parse_size, default=None,
                   help="--device cuda: VRAM for experts of a WHOLE 60-layer model (default 24GB); a model of L < 60 "
                        "layers uses B * L/60")
    p.add_argument("--cold", action="store_true",
                   help="--device cuda: drop the model's files from the page cache before the timed tokens")
    p.add_argument("--warmup", type=int, default=4, help="--device cuda: untimed decode tokens before the timed ones")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not args._worker:
        from fmoe.bench import stream_cuda
        return stream_cuda.main(args, parser)
    if args.gpu_memory_budget is not None or args.cold or args.routing == "router":
        parser.error("--gpu-memory-budget, --cold and --routing router apply with --device cuda only")
    if args._worker:
        spec = json.loads(Path(args._worker[0]).read_text())
        fn = model_worker if spec.get("engine") == "model" else worker
        Path(args._worker[1]).write_text(json.dumps(fn(spec)))
        return 0
    from fmoe.storage.stream_layout import StreamingLayout, is_streaming_layout
    from fmoe.storage.synth import synth

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    model = Path(args.model_dir or f"/tmp/fmoe-bench-{args.like}-L{args.layers}-E{args.experts}-b{args.bits}")
    t0 = time.perf_counter()
    if not is_streaming_layout(model):
        synth(model, args.like, args.layers, args.experts, args.bits, top_k=args.top_k, progress=not args.json)
    build_s = time.perf_counter() - t0
    if args.ttft_tokens:
        res = ttft(str(model), args.ttft_tokens, mode=args.mode if args.mode != "both" else "page-cache",
                   budget=args.budget, seed=args.seed)
        log(f"TTFT of {res['tokens']} tokens: batched {res['batched_s']} s, token-by-token {res['token_by_token_s']} s "
            f"({res['speedup']}x); expert bytes read {res['batched_expert_bytes']} vs {res['token_by_token_expert_bytes']}")
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        if args.json:
            print(json.dumps(res))
        return 0
    layout = StreamingLayout(model)
    cfg = layout.config_raw
    k = args.top_k or cfg["num_experts_per_tok"]
    log(f"model {model}: {layout.num_layers} layers x {layout.num_experts} experts, "
        f"{layout.total_expert_bytes() / 1e9:.2f} GB of experts, top-{k}")
    load_start = os.getloadavg()
    bw = disk_bandwidth(layout, args.io_threads)
    bw.update(memory_bandwidth())
    log(f"disk (O_DIRECT expert reads, {args.io_threads} in flight) {bw['disk_read_gbps']:.2f} GB/s "
        f"{bw['disk_read_gbps_by_qd']}, sequential {bw['disk_seq_gbps']:.2f} GB/s; "
        f"memory read {bw['mem_read_gbps']:.1f} GB/s")
    ne_est = os.path.getsize(layout.non_expert_file) if not args.no_non_expert else 0
    if args.budget is not None:
        budget = args.budget
    elif args.memory_cap is not None:
        # the largest budget whose resident estimate (non-expert + budget + pool + held experts + process overhead,
        # docs/reference/streaming-format.md, Memory) fits under the cap
        floor = memory_floor(layout, args.io_threads, k, ne_est)
        if args.memory_cap < floor:
            raise SystemExit(f"--memory-cap {args.memory_cap / 2**30:.2f} GiB is below what this model needs with "
                             f"no expert cache at all ({floor / 2**30:.2f} GiB: non-expert weights "
                             f"{ne_est / 2**30:.2f} GiB + buffers + process)")
        budget = budget_for_memory(args.memory_cap, layout, args.io_threads, k, ne_est)
    else:
        budget = 1 << 30
    route = routing(args.tokens, layout.num_layers, layout.num_experts, k, args.routing, args.seed)
    modes = ("page-cache", "direct") if args.mode == "both" else (args.mode,)
    overlaps = (False, True) if args.overlap == "both" else (args.overlap == "on",)
    policies = ("lru", "lfu") if args.policy == "both" else (args.policy,)
    runs = []
    for mode in modes:
        for ov in overlaps:
            for pol in policies:
                spec = dict(model=str(model), engine=args.engine, top_k=args.top_k, seed=args.seed, tokens=args.tokens,
                            mode=mode, overlap=ov, policy=pol, routing=args.routing,
                            budget=budget if mode == "direct" else 0, verify=args.verify,
                            io_threads=args.io_threads, touch=args.touch == "on", route=route.tolist(),
                            load_non_expert=not args.no_non_expert)
                # the disk is shared and drifts: its bound for this run = a bare O_DIRECT replay of the same reads
                # (half the tokens right before, half right after the store run)
                h = max(1, args.tokens // 2)
                before = replay_bandwidth(layout, route[:h], args.io_threads)
                res = run_child(spec, args.memory_cap)
                after = replay_bandwidth(layout, route[h:] if args.tokens > 1 else route, args.io_threads)
                if args.engine == "model" and not res.get("finite", True):
                    log("warning: non-finite logits in the synthetic model run")
                bw_run = dict(bw, disk_read_gbps=(before + after) / 2)
                r = summarize(res, bw_run, spec)
                r["disk_read_gbps"] = round(bw_run["disk_read_gbps"], 3)
                r["disk_replay_gbps_before_after"] = [round(before, 3), round(after, 3)]
                runs.append(r)
                if args.out:   # keep what was measured even if a later run fails (e.g. killed by the cap)
                    Path(args.out).write_text(json.dumps({"partial": True, "runs": runs, **bw}, indent=2))
                log(f"{mode:10s} overlap={'on ' if ov else 'off'} {pol}: {r['tok_s']:.3f} tok/s "
                    f"(bound {r['bound_tok_s']:.3f}), {r['s_per_token']:.3f} s/token, "
                    f"served {r['gbps']:.2f} GB/s, disk {r['disk_gbps']:.2f} GB/s, "
                    f"{r['fraction_of_bound']:.2f} of bound, hit rate {r['cache_hit_rate']:.2f}, "
                    f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB (limit {r['rss_limit_bytes'] / 2**30:.2f})")
    result = {
        "bench": "stream", "model": {"like": cfg.get("fmoe_synthetic", {}).get("like", args.like),
                                     "layers": layout.num_layers, "experts": layout.num_experts, "bits": args.bits,
                                     "top_k": k, "expert_bytes": layout.layers[0].sizes[0],
                                     "expert_total_bytes": layout.total_expert_bytes(),
                                     "non_expert_file_bytes": os.path.getsize(layout.non_expert_file)},
        "machine": {"cpus": os.cpu_count(), "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")},
        "memory_cap_bytes": args.memory_cap, "expert_budget_bytes": budget, "tokens": args.tokens,
        "io_threads": args.io_threads, "touch": args.touch == "on", "synth_build_s": round(build_s, 2),
        **{k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in bw.items()},
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }
    return finish(result, args, model)


def finish(result: dict, args, model) -> int:
    """Write the result (``--out``), print it (``--json``), delete the synthetic model (``--cleanup``)."""
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    if args.cleanup:
        import shutil
        shutil.rmtree(model, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
