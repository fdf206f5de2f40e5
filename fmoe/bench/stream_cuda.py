"""``fmoe bench stream --device cuda``: the engine decoding on the GPU with experts streamed in tiers
(VRAM expert cache -> host RAM (the page cache, or the direct-mode host cache) -> disk), against a tiered bound
whose bandwidths are all measured in the same run.

    fmoe bench stream --device cuda [--gpu-memory-budget 24GB] [--top-k K] [--routing uniform|zipf]
                      [--mode page-cache|direct] [--budget SIZE] [--cold] [--tokens N] [--warmup W] [--json]

Per run (one model load per mode/policy):

- decode: 1 prompt token, ``--warmup`` untimed tokens, then ``--tokens`` timed greedy tokens (each synchronized);
  ms/token median and mean, tok/s = timed tokens / their total time;
- tiers, over the timed tokens only (counters differenced from a mark taken after the warm-up): the share of expert
  uses served from VRAM (``device_cache_hits``), host RAM (direct-mode host cache hits, plus page-cache mode reads
  the page cache served) and disk;
- the bound: VRAM bytes / HBM read bandwidth + host-hit bytes / pinned host-to-GPU bandwidth + disk bytes / disk
  bandwidth. The VRAM bytes are the VRAM-hit expert bytes plus the non-expert weights a decode step reads (their
  stored bytes less the embedding table, of which a step reads one row, once per token); ``bound_experts_only``
  leaves those out. ``fraction_of_bound`` (the headline) uses the serial sum of the terms;
  ``fraction_of_overlapped_bound`` their maximum (all three transfers overlapped perfectly);
- with L != 60 layers: tok/s projected to 60 layers as tok/s * L/60 (a projection, not a measurement: per-token time
  assumed proportional to the number of layers), and ``--gpu-memory-budget`` taken as the budget of a whole 60-layer
  model, scaled to B * L/60 for L < 60 layers.

Routing: the router's choice is replaced by ids pre-generated per token per layer by ``fmoe.bench.stream.routing``
(``--routing uniform|zipf``, ``--seed``), through ``Model.set_route_override`` (the weights stay the router's softmax
over those ids; each layer's ids are read back from the GPU like the router's own); ``--routing router`` keeps the
model's own router (on a synthetic model: whatever its random router picks). With every expert in VRAM only the
router lets a step replay as one CUDA graph; with experts in tiers both replay segmented graphs. The router-based
expert prediction is off in this mode (it would not follow the override).

``--cold`` drops the model's files from the page cache after the warm-up; it turns off the CUDA registration of the
page cache (``FMOE_PIN_PAGE_CACHE=0``), whose locked pages could not be dropped.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

FULL_LAYERS = 60                 # Qwen3.5-397B-A17B: what budgets and projections refer to
DEFAULT_GPU_BUDGET = 24 * 10**9  # VRAM for experts of a whole 60-layer model (a 24 GB-class GPU)


# ------------------------------------------------------------------------------------------------ pure parts


def scaled_gpu_budget(whole_model_budget: int, layers: int, full_layers: int = FULL_LAYERS) -> int:
    """``whole_model_budget`` is for a ``full_layers`` model; a model of fewer layers gets its share, B * L/60."""
    if layers <= 0:
        raise ValueError(f"layers must be positive, got {layers}")
    if layers >= full_layers:
        return int(whole_model_budget)
    return int(whole_model_budget * layers / full_layers)


def projected_tok_s(tok_s: float | None, layers: int, full_layers: int = FULL_LAYERS) -> float | None:
    """tok/s of a ``layers``-layer run projected to ``full_layers`` layers: tok/s * L / 60."""
    if tok_s is None:
        return None
    return tok_s * layers / full_layers


def tiered_bound(vram_bytes: float, host_bytes: float, disk_bytes: float, hbm_gbps: float, h2d_gbps: float,
                 disk_gbps: float, wall_s: float | None = None) -> dict:
    """Seconds each tier's bytes need at its bandwidth (GB/s = 1e9 B/s), their serial sum and their maximum (the
    overlapped form), and with ``wall_s`` the fraction of each bound the run achieved (bound / wall: 1.0 = at the
    bound)."""
    def term(nbytes, gbps, name):
        if nbytes < 0:
            raise ValueError(f"{name} bytes cannot be negative ({nbytes})")
        if not nbytes:
            return 0.0
        if not gbps or gbps <= 0:
            raise ValueError(f"{name} bandwidth must be positive to bound {nbytes} bytes (got {gbps})")
        return nbytes / (gbps * 1e9)

    t = {"vram_s": term(vram_bytes, hbm_gbps, "HBM"), "host_s": term(host_bytes, h2d_gbps, "host-to-GPU"),
         "disk_s": term(disk_bytes, disk_gbps, "disk")}
    serial, overlapped = sum(t.values()), max(t.values())
    out = dict(t, serial_s=serial, overlapped_s=overlapped)
    if wall_s is not None:
        out["fraction_of_bound"] = serial / wall_s if wall_s > 0 else None
        out["fraction_of_overlapped_bound"] = overlapped / wall_s if wall_s > 0 else None
    return out


def counter_delta(before: dict, after: dict) -> dict:
    """``after - before`` for every numeric key of both (expert-store and VRAM-tier counters over a window)."""
    out = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(b, (int, float)) \
                and not isinstance(b, bool):
            out[k] = v - b
    return out


def tier_split(expert_uses: int, delta: dict, expert_nbytes: int) -> dict:
    """Where the ``expert_uses`` (layer, expert) applications of a window were served from, from the window's counter
    differences ``delta`` (``counter_delta`` of ``m.experts.stats()``): VRAM (device_cache_hits), host RAM (the
    expert store's own cache hits, plus the bytes of its reads that the page cache served) and disk (the rest).
    Without a VRAM tier (no device_cache_* keys) every use goes to the store."""
    dh = int(delta.get("device_cache_hits", 0))
    dm = int(delta.get("device_cache_misses", expert_uses - dh))
    total = dh + dm
    store_hits, store_misses = int(delta.get("cache_hits", 0)), int(delta.get("cache_misses", 0))
    read = int(delta.get("bytes_read", 0))
    pc = int(delta.get("page_cache_bytes", 0))
    pc_frac = pc / read if read else 0.0
    host_uses = store_hits + store_misses * pc_frac
    disk_uses = store_misses * (1.0 - pc_frac)

    def rate(x):
        return x / total if total else None
    return {"expert_uses": total, "vram_hits": dh, "vram_misses": dm, "host_uses": host_uses, "disk_uses": disk_uses,
            "vram_hit_rate": rate(dh), "host_hit_rate": rate(host_uses), "disk_rate": rate(disk_uses),
            "vram_expert_bytes": dh * expert_nbytes, "host_bytes": store_hits * expert_nbytes + pc,
            "disk_bytes": int(delta.get("disk_bytes", read - pc))}


class RouteReplay:
    """``Model.set_route_override`` callback replaying pre-generated routing: ``route`` [tokens, layers, k] expert
    ids; each call ``fn(layer, T)`` returns the next T tokens' ids of that layer ([T, k]), so a prompt of T tokens
    and T single-token steps consume the same rows. Past the end it wraps around (``wrapped`` counts the calls that
    did: a run sized right never does)."""

    def __init__(self, route: np.ndarray):
        self.route = np.asarray(route, dtype=np.int64)
        if self.route.ndim != 3:
            raise ValueError(f"route must be [tokens, layers, k], got shape {self.route.shape}")
        self.pos = [0] * self.route.shape[1]
        self.wrapped = 0

    def __call__(self, layer: int, T: int) -> np.ndarray:
        n = self.route.shape[0]
        p = self.pos[layer]
        if p + T > n:
            self.wrapped += 1
        self.pos[layer] = p + T
        return self.route[(p + np.arange(T)) % n, layer]


def cuda_unavailable_reason() -> str | None:
    """Why this process cannot run on a CUDA GPU, or None when it can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        return f"torch {torch.__version__} ({build}) sees no CUDA GPU on this machine"
    return None


# ------------------------------------------------------------------------------------------------ bandwidths


def _best_s(fn, reps: int) -> float:
    import torch
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def hbm_bandwidth(nbytes: int = 1 << 30, reps: int = 5) -> dict:
    """HBM read bandwidth (GB/s): a float32 sum over ``nbytes`` (bytes read / time, best of ``reps``); beside it a
    device-to-device copy of the same buffer, reported both as bytes read / time and as read + written / time."""
    import torch
    x = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    red = _best_s(lambda: x.sum(), reps)
    cp = _best_s(lambda: y.copy_(x), reps)        # the buffers go with this frame (run_one empties the cache)
    return {"hbm_gbps": nbytes / red / 1e9, "hbm_read_reduction_gbps": nbytes / red / 1e9,
            "hbm_copy_read_gbps": nbytes / cp / 1e9, "hbm_copy_rw_gbps": 2 * nbytes / cp / 1e9,
            "hbm_test_bytes": nbytes}


def h2d_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> dict:
    """Host-to-GPU bandwidth (GB/s): a pinned host tensor ``.to('cuda', non_blocking=True)``, synchronized, best of
    ``reps``; and the same from pageable memory (how the engine copies experts today: from its read buffers)."""
    import torch
    pinned = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    t_pin = _best_s(lambda: pinned.to("cuda", non_blocking=True), reps)
    t_page = _best_s(lambda: pageable.to("cuda"), reps)
    return {"h2d_pinned_gbps": nbytes / t_pin / 1e9, "h2d_pageable_gbps": nbytes / t_page / 1e9,
            "h2d_test_bytes": nbytes}


# ------------------------------------------------------------------------------------------------ one run


def run_one(model_dir: str, spec: dict, route: np.ndarray | None, bw: dict) -> dict:
    """Load the model on the GPU, replay ``route`` as its routing, decode; counters, tiers and bound of the timed
    tokens."""
    import torch

    from fmoe.bench.stream import _drop_cache, _embed_bytes
    from fmoe.engine.model import Model
    from fmoe.errors import ConfigError

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    alloc0 = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    m = Model.load(model_dir, backend="torch", dtype="bfloat16", device="cuda", experts_per_token=spec["top_k"],
                   stream={"mode": spec["mode"], "memory_budget": spec["budget"], "verify": spec["verify"],
                           "io_threads": spec["io_threads"], "policy": spec["policy"]},
                   predict_experts=False, gpu_memory_budget=spec["gpu_memory_budget"])
    load_s = time.perf_counter() - t0
    try:
        replay = None
        if route is not None:
            set_override = getattr(m, "set_route_override", None)
            if set_override is None:
                raise ConfigError("--device cuda needs Model.set_route_override (fmoe.engine.model) to apply "
                                  "--routing; this engine has none")
            replay = RouteReplay(route)
            set_override(replay)
        # what a decode step reads besides the routed experts: every non-expert weight (attention / DeltaNet,
        # shared experts, routers, norms, lm_head) except the embedding table, of which it reads one row; tied
        # embeddings are read whole as the output layer. From the stored sizes (the GPU's allocation after load
        # may already hold expert slots), with the allocation beside it.
        gpu_after_load = torch.cuda.memory_allocated() - alloc0
        ne_file = os.path.getsize(m.checkpoint.layout.non_expert_file)
        embed = _embed_bytes(m)
        embed_not_read = 0 if m.cfg.tie_word_embeddings else embed
        L = m.cfg.num_hidden_layers
        expert_nbytes = m.checkpoint.layout.layers[0].sizes[0]
        cache = m.new_cache()
        t0 = time.perf_counter()
        tok = int(m.forward([int(spec["prompt_token"])], cache).argmax())
        prompt_s = time.perf_counter() - t0
        warm = []
        for _ in range(spec["warmup"]):
            t0 = time.perf_counter()
            tok = int(m.forward([tok], cache).argmax())
            warm.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        before, mark = dict(m.experts.stats()), m.stats()
        dropped = _drop_cache([Lr.file for Lr in m.checkpoint.layout.layers]
                              + [m.checkpoint.layout.non_expert_file]) if spec["cold"] else None
        times = []
        logits = None
        for _ in range(spec["tokens"]):
            t0 = time.perf_counter()
            logits = m.forward([tok], cache)
            tok = int(logits.argmax())
            times.append(time.perf_counter() - t0)
        after, window = dict(m.experts.stats()), m.stats_since(mark)
        graph = getattr(m, "_graph", None)
        decode_graph = type(graph).__name__ if graph else "eager"      # DecodeGraph / SegmentedGraph / eager
        finite = bool(torch.isfinite(logits).all()) if logits is not None else None
        peak_alloc = torch.cuda.max_memory_allocated()
    finally:
        m.close()
        del m
        gc.collect()
        torch.cuda.empty_cache()

    raw = dict(times=times, warm=warm, prompt_s=prompt_s, load_s=load_s, before=before, after=after,
               expert_calls=window.expert_calls, expert_wait_s=window.expert_wait_s, layers=L,
               expert_nbytes=expert_nbytes, non_expert_bytes=ne_file, embed_bytes=embed,
               embed_not_read_bytes=embed_not_read, gpu_allocated_after_load_bytes=gpu_after_load,
               page_cache_dropped=dropped, finite=finite, gpu_peak_allocated_bytes=peak_alloc,
               route_wrapped=replay.wrapped if replay is not None else None, decode_graph=decode_graph)
    return summarize_run(raw, spec, bw)


def summarize_run(raw: dict, spec: dict, bw: dict) -> dict:
    """One run's result from its raw measurements (``run_one``): timings, tiers over the timed window, the bound."""
    times, warm, L = raw["times"], raw["warm"], raw["layers"]
    expert_nbytes = raw["expert_nbytes"]
    ne_read = max(0, raw["non_expert_bytes"] - raw["embed_not_read_bytes"])
    before, after = raw["before"], raw["after"]
    T = len(times)
    wall = sum(times)
    delta = counter_delta(before, after)
    tiers = tier_split(raw["expert_calls"], delta, expert_nbytes)
    vram_bytes = tiers["vram_expert_bytes"] + T * ne_read
    disk_gbps = bw["disk_read_gbps"]
    bound = tiered_bound(vram_bytes, tiers["host_bytes"], tiers["disk_bytes"], bw["hbm_gbps"],
                         bw["h2d_pinned_gbps"], disk_gbps, wall)
    experts_only = tiered_bound(tiers["vram_expert_bytes"], tiers["host_bytes"], tiers["disk_bytes"],
                                bw["hbm_gbps"], bw["h2d_pinned_gbps"], disk_gbps, wall)
    tok_s = T / wall if wall else None
    med = statistics.median(times) if times else None

    def r(x, n=4):      # n decimals, or n significant digits below that (a tiny model's bound is microseconds)
        if x is None:
            return None
        return round(x, n) if x == 0 or abs(x) >= 10 ** -(n - 1) else float(f"{x:.{n}g}")
    return {
        "mode": spec["mode"], "policy": spec["policy"], "routing": spec["routing"], "top_k": spec["top_k"],
        "layers": L, "cold": spec["cold"], "page_cache_dropped": raw["page_cache_dropped"],
        "gpu_memory_budget": spec["gpu_memory_budget"], "gpu_memory_budget_60_layers": spec["gpu_memory_budget_60"],
        "host_memory_budget": spec["budget"],
        "warmup_tokens": spec["warmup"], "tokens": T, "wall_s": r(wall, 4),
        "tok_s": r(tok_s), "tok_s_median": r(1 / med if med else None),
        "ms_per_token_median": r(med * 1e3 if med else None, 2),
        "ms_per_token_mean": r(wall / T * 1e3 if T else None, 2),
        "ms_per_token": [round(t * 1e3, 2) for t in times], "warmup_ms_per_token": [round(t * 1e3, 2) for t in warm],
        "prompt_ms": round(raw["prompt_s"] * 1e3, 2), "load_s": round(raw["load_s"], 2),
        "tok_s_projected_60_layers": r(projected_tok_s(tok_s, L)),
        "bound_tok_s": r(T / bound["serial_s"] if bound["serial_s"] else None),
        "bound_tok_s_overlapped": r(T / bound["overlapped_s"] if bound["overlapped_s"] else None),
        "bound_tok_s_projected_60_layers": r(projected_tok_s(T / bound["serial_s"], L) if bound["serial_s"] else None),
        "fraction_of_bound": r(bound["fraction_of_bound"]),                       # serial sum: the headline
        "fraction_of_overlapped_bound": r(bound["fraction_of_overlapped_bound"]),
        "bound": {k: r(v, 6) for k, v in bound.items()},
        "bound_experts_only": {k: r(v, 6) for k, v in experts_only.items()},
        "vram_hit_rate": r(tiers["vram_hit_rate"]), "host_hit_rate": r(tiers["host_hit_rate"]),
        "disk_rate": r(tiers["disk_rate"]),
        "tiers": {k: (r(v) if isinstance(v, float) else v) for k, v in tiers.items()},
        "vram_bytes": vram_bytes, "non_expert_read_bytes_per_token": ne_read,
        "non_expert_bytes": raw["non_expert_bytes"], "embed_bytes": raw["embed_bytes"], "expert_bytes": expert_nbytes,
        "gpu_allocated_after_load_bytes": raw.get("gpu_allocated_after_load_bytes"),
        "h2d_bytes": delta.get("device_bytes_copied"),
        "device_resident_bytes": after.get("device_resident_bytes"),
        "device_cache_evictions": delta.get("device_cache_evictions"),
        "page_cache_dma": {"layers": after.get("device_dma_layers"), "pinned_bytes": after.get("device_dma_pinned_bytes"),
                           "register_s": after.get("device_dma_register_s")},
        "store": {k: delta.get(k) for k in ("bytes_read", "reads", "cache_hits", "cache_misses", "disk_bytes",
                                             "page_cache_bytes", "io_wait_s", "evictions")},
        "expert_wait_s": r(raw["expert_wait_s"]), "gpu_peak_allocated_bytes": raw["gpu_peak_allocated_bytes"],
        "route_wrapped": raw["route_wrapped"], "finite": raw["finite"], "decode_graph": raw.get("decode_graph"),
    }


# ------------------------------------------------------------------------------------------------ driver


def check_args(args, parser) -> None:
    """Flags that do not apply on the GPU path are errors naming the flag (argparse's: usage, exit code 2)."""
    if args.engine != "model":
        parser.error("--device cuda runs the engine: --engine store applies to the CPU path only")
    if args.memory_cap is not None:
        parser.error("--memory-cap (a cgroup cap on a child process) applies to the CPU path only, not --device cuda")
    if args.ttft_tokens:
        parser.error("--ttft-tokens applies to the CPU path only, not --device cuda")
    if args.touch == "on":
        parser.error("--touch applies to the CPU store loop only, not --device cuda")
    if args.overlap == "on":
        parser.error("--overlap on (router-based expert prediction) is not supported with --device cuda: "
                     "the prediction would not follow --routing")
    if args.warmup < 0 or args.tokens < 1:
        parser.error("--tokens must be >= 1 and --warmup >= 0")
    reason = cuda_unavailable_reason()
    if reason is not None:
        parser.error(f"--device cuda: {reason}; run without --device cuda for the CPU path")


def main(args, parser) -> int:
    check_args(args, parser)
    import torch

    from fmoe.bench.stream import disk_bandwidth, routing
    from fmoe.storage.stream_layout import StreamingLayout, is_streaming_layout
    from fmoe.storage.synth import synth

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    model = Path(args.model_dir or f"/tmp/fmoe-bench-{args.like}-L{args.layers}-E{args.experts}-b{args.bits}")
    t0 = time.perf_counter()
    if not is_streaming_layout(model):
        synth(model, args.like, args.layers, args.experts, args.bits, progress=not args.json)
    build_s = time.perf_counter() - t0
    layout = StreamingLayout(model)
    cfg = layout.config_raw
    tcfg = cfg.get("text_config", cfg)
    L, E = layout.num_layers, layout.num_experts
    k = args.top_k or int(tcfg["num_experts_per_tok"])
    expert_nbytes = layout.layers[0].sizes[0]
    whole = DEFAULT_GPU_BUDGET if args.gpu_memory_budget is None else args.gpu_memory_budget
    gpu_budget = scaled_gpu_budget(whole, L)
    log(f"model {model}: {L} layers x {E} experts, {layout.total_expert_bytes() / 1e9:.2f} GB of experts "
        f"({expert_nbytes / 1e6:.2f} MB each), top-{k}, routing {args.routing}, on {torch.cuda.get_device_name()}")
    if L < FULL_LAYERS:
        log(f"VRAM budget for experts: {whole / 1e9:.2f} GB for a whole {FULL_LAYERS}-layer model -> "
            f"{gpu_budget / 1e9:.2f} GB for these {L} layers (x {L}/{FULL_LAYERS})")
    else:
        log(f"VRAM budget for experts: {gpu_budget / 1e9:.2f} GB")

    # bandwidths, in this run, before the model takes GPU memory
    load_start = os.getloadavg()
    bw = disk_bandwidth(layout, args.io_threads)
    bw.update(hbm_bandwidth())
    bw.update(h2d_bandwidth())
    log(f"bandwidths (measured now): HBM read {bw['hbm_gbps']:.0f} GB/s (copy {bw['hbm_copy_rw_gbps']:.0f} GB/s "
        f"read+write), host-to-GPU pinned {bw['h2d_pinned_gbps']:.1f} GB/s (pageable {bw['h2d_pageable_gbps']:.1f}), "
        f"disk {bw['disk_read_gbps']:.2f} GB/s (O_DIRECT expert reads, {bw['disk_read_gbps_by_qd']})")

    n_route = 1 + args.warmup + args.tokens + 8      # + slack: a CUDA graph capture may run a step of its own
    route = None if args.routing == "router" else routing(n_route, L, E, k, args.routing, args.seed)
    prompt_token = int(np.random.default_rng(args.seed).integers(0, 1000))
    modes = ("page-cache", "direct") if args.mode == "both" else (args.mode,)
    policies = ("lru", "lfu") if args.policy == "both" else (args.policy,)
    result = {
        "bench": "stream", "device": "cuda",
        "model": {"path": str(model), "like": cfg.get("fmoe_synthetic", {}).get("like", args.like), "layers": L,
                  "experts": E, "bits": args.bits, "top_k": k, "expert_bytes": expert_nbytes,
                  "expert_total_bytes": layout.total_expert_bytes(),
                  "non_expert_file_bytes": os.path.getsize(layout.non_expert_file)},
        "machine": {"cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name(),
                    "gpu_total_bytes": torch.cuda.get_device_properties(0).total_memory,
                    "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "torch": torch.__version__},
        "routing": args.routing, "seed": args.seed, "tokens": args.tokens, "warmup_tokens": args.warmup,
        "io_threads": args.io_threads, "cold": args.cold,
        "gpu_memory_budget_60_layers": whole, "gpu_memory_budget": gpu_budget, "full_layers": FULL_LAYERS,
        "synth_build_s": round(build_s, 2),
        **{k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in bw.items()},
        "bound_note": "fraction_of_bound = serial bound / wall (the headline); the VRAM term includes the non-expert "
                      "weights read each token; bound_experts_only leaves them out",
        "runs": [],
    }
    if args.cold:   # registered (page-locked) page cache cannot be dropped: a cold run reads through pinned buffers
        os.environ["FMOE_PIN_PAGE_CACHE"] = "0"
        result["page_cache_registration"] = "off (--cold: FMOE_PIN_PAGE_CACHE=0, locked pages cannot be dropped)"
    for mode in modes:
        for pol in policies:
            budget = (args.budget if args.budget is not None else 1 << 30) if mode == "direct" else 0
            spec = dict(mode=mode, policy=pol, routing=args.routing, top_k=k, budget=budget, verify=args.verify,
                        io_threads=args.io_threads, gpu_memory_budget=gpu_budget, gpu_memory_budget_60=whole,
                        warmup=args.warmup, tokens=args.tokens, cold=args.cold, prompt_token=prompt_token)
            res = run_one(str(model), spec, route, bw)
            result["runs"].append(res)
            if args.out:   # keep what was measured even if a later run fails
                Path(args.out).write_text(json.dumps(dict(result, partial=True), indent=2))
            log(summary_lines(res, bw))
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    from fmoe.bench.stream import finish

    return finish(result, args, model)


def summary_lines(res: dict, bw: dict) -> str:
    """The human-readable summary of one run."""
    b, t, L = res["bound"], res["tiers"], res["layers"]
    T = res["tokens"]

    def ms(s):
        return s / T * 1e3

    def pct(x):
        return "-" if x is None else f"{x:.2f}"
    lines = [
        f"{res['mode']} {res['policy']}{' cold' if res['cold'] else ''}, top-{res['top_k']}, {res['routing']} routing: "
        f"{res['tok_s']:.2f} tok/s ({T} timed tokens after {res['warmup_tokens']} warm-up: median "
        f"{res['ms_per_token_median']:.1f} ms/token, mean {res['ms_per_token_mean']:.1f}; decode: "
        f"{res.get('decode_graph') or 'eager'})",
        f"  tiers (share of {t['expert_uses']} expert uses): VRAM {pct(res['vram_hit_rate'])}, host RAM "
        f"{pct(res['host_hit_rate'])}, disk {pct(res['disk_rate'])}; VRAM resident "
        f"{(res['device_resident_bytes'] or 0) / 1e9:.2f} GB of {res['gpu_memory_budget'] / 1e9:.2f} GB",
        f"  host-to-GPU copies straight from the page cache (registered mappings): "
        f"{res['page_cache_dma']['layers'] or 0} of {L} layer files, "
        f"{(res['page_cache_dma']['pinned_bytes'] or 0) / 1e9:.1f} GB, registered in "
        f"{res['page_cache_dma']['register_s'] or 0:.1f} s",
        f"  bound, serial sum (the headline): {ms(b['serial_s']):.2f} ms/token = VRAM {ms(b['vram_s']):.2f} "
        f"({res['vram_bytes'] / T / 1e9:.3f} GB/token at {bw['hbm_gbps']:.0f} GB/s, incl. "
        f"{res['non_expert_read_bytes_per_token'] / 1e9:.3f} GB non-expert) + host {ms(b['host_s']):.2f} "
        f"({t['host_bytes'] / T / 1e9:.3f} GB/token at {bw['h2d_pinned_gbps']:.1f} GB/s) + disk {ms(b['disk_s']):.2f} "
        f"({t['disk_bytes'] / T / 1e9:.3f} GB/token at {bw['disk_read_gbps']:.2f} GB/s) -> "
        f"{res['bound_tok_s']:.1f} tok/s; overlapped (max of the terms) {ms(b['overlapped_s']):.2f} ms/token -> "
        f"{res['bound_tok_s_overlapped']:.1f} tok/s",
        f"  fraction of the bound: {res['fraction_of_bound']:.3f} of the serial sum (headline), "
        f"{res['fraction_of_overlapped_bound']:.3f} of the overlapped form",
    ]
    if L != FULL_LAYERS:
        lines.append(f"  projected to {FULL_LAYERS} layers: {res['tok_s_projected_60_layers']:.2f} tok/s "
                     f"(= {res['tok_s']:.2f} x {L}/{FULL_LAYERS}; a projection from this {L}-layer run, assuming "
                     f"per-token time proportional to the layers, not a {FULL_LAYERS}-layer measurement)")
    if res.get("route_wrapped"):
        lines.append(f"  warning: the routing replay wrapped around {res['route_wrapped']} times")
    if res.get("finite") is False:
        lines.append("  warning: non-finite logits")
    return "\n".join(lines)
