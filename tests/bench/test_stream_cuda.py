"""``fmoe bench stream --device cuda`` (fmoe/bench/stream_cuda.py): the tiered bound's arithmetic, the per-tier
split of a window's counters, the 60-layer budget scaling and projection, the routing replay, the CLI (a clear error
without a GPU) and the summary of a run; the end-to-end run on a GPU only where torch sees one."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fmoe.bench import stream, stream_cuda
from fmoe.bench.stream_cuda import (RouteReplay, counter_delta, projected_tok_s, scaled_gpu_budget, summarize_run,
                                    summary_lines, tier_split, tiered_bound)

GB = 10**9
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a CUDA GPU")


# ------------------------------------------------------------------------------------------------ the bound


def test_tiered_bound_serial_overlapped_and_fraction():
    # 4.8 GB at 4800 GB/s = 1 ms; 0.5 GB at 50 GB/s = 10 ms; 0.6 GB at 6 GB/s = 100 ms
    b = tiered_bound(4.8 * GB, 0.5 * GB, 0.6 * GB, hbm_gbps=4800, h2d_gbps=50, disk_gbps=6, wall_s=0.222)
    assert b["vram_s"] == pytest.approx(0.001)
    assert b["host_s"] == pytest.approx(0.010)
    assert b["disk_s"] == pytest.approx(0.100)
    assert b["serial_s"] == pytest.approx(0.111)
    assert b["overlapped_s"] == pytest.approx(0.100)
    assert b["fraction_of_bound"] == pytest.approx(0.5)
    assert b["fraction_of_overlapped_bound"] == pytest.approx(0.1 / 0.222)


def test_tiered_bound_without_wall_and_empty_tiers():
    b = tiered_bound(2 * GB, 0, 0, hbm_gbps=4000, h2d_gbps=0, disk_gbps=0)   # no bytes: a missing bandwidth is fine
    assert b["serial_s"] == b["overlapped_s"] == pytest.approx(0.0005)
    assert b["host_s"] == b["disk_s"] == 0.0
    assert "fraction_of_bound" not in b


def test_tiered_bound_refuses_bytes_without_a_bandwidth():
    with pytest.raises(ValueError, match="disk bandwidth"):
        tiered_bound(0, 0, 1 * GB, hbm_gbps=4000, h2d_gbps=50, disk_gbps=0)
    with pytest.raises(ValueError, match="negative"):
        tiered_bound(-1, 0, 0, hbm_gbps=4000, h2d_gbps=50, disk_gbps=1)


# ------------------------------------------------------------------------------------------------ 60-layer scaling


def test_gpu_budget_is_for_a_whole_60_layer_model():
    assert scaled_gpu_budget(24 * GB, 12) == int(4.8 * GB)
    assert scaled_gpu_budget(80 * GB, 12) == 16 * GB
    assert scaled_gpu_budget(24 * GB, 60) == 24 * GB
    assert scaled_gpu_budget(24 * GB, 90) == 24 * GB          # more layers than 60: not scaled up
    assert scaled_gpu_budget(0, 12) == 0                       # 0: no VRAM tier
    with pytest.raises(ValueError):
        scaled_gpu_budget(24 * GB, 0)


def test_projection_to_60_layers():
    assert projected_tok_s(9.05, 12) == pytest.approx(1.81)
    assert projected_tok_s(16.57, 12) == pytest.approx(3.314)
    assert projected_tok_s(3.0, 60) == pytest.approx(3.0)
    assert projected_tok_s(None, 12) is None


# ------------------------------------------------------------------------------------------------ tiers


def test_counter_delta_subtracts_numbers_only():
    d = counter_delta({"bytes_read": 10, "mode": "direct", "verify": False, "io_wait_s": 0.5},
                      {"bytes_read": 35, "mode": "direct", "verify": False, "io_wait_s": 2.0, "new": 3})
    assert d == {"bytes_read": 25, "io_wait_s": 1.5}


def test_tier_split_page_cache_mode():
    nb = 1000
    # 100 expert uses: 60 VRAM hits; 40 reads of which the page cache served 30 experts' bytes, the disk 10
    delta = {"device_cache_hits": 60, "device_cache_misses": 40, "cache_hits": 0, "cache_misses": 40,
             "bytes_read": 40 * nb, "page_cache_bytes": 30 * nb, "disk_bytes": 10 * nb}
    t = tier_split(100, delta, nb)
    assert t["expert_uses"] == 100
    assert t["vram_hit_rate"] == pytest.approx(0.6)
    assert t["host_hit_rate"] == pytest.approx(0.3)
    assert t["disk_rate"] == pytest.approx(0.1)
    assert (t["vram_expert_bytes"], t["host_bytes"], t["disk_bytes"]) == (60 * nb, 30 * nb, 10 * nb)


def test_tier_split_direct_mode_host_cache():
    nb, stride = 1000, 4096
    # 50 uses: 20 VRAM hits; of 30 store requests the host cache had 25, 5 read with O_DIRECT (whole strides)
    delta = {"device_cache_hits": 20, "device_cache_misses": 30, "cache_hits": 25, "cache_misses": 5,
             "bytes_read": 5 * stride, "page_cache_bytes": 0, "disk_bytes": 5 * stride}
    t = tier_split(50, delta, nb)
    assert [t["vram_hit_rate"], t["host_hit_rate"], t["disk_rate"]] == pytest.approx([0.4, 0.5, 0.1])
    assert (t["vram_expert_bytes"], t["host_bytes"], t["disk_bytes"]) == (20 * nb, 25 * nb, 5 * stride)


def test_tier_split_without_a_vram_tier():
    nb = 1000
    delta = {"cache_hits": 0, "cache_misses": 8, "bytes_read": 8 * nb, "page_cache_bytes": 8 * nb, "disk_bytes": 0}
    t = tier_split(8, delta, nb)                               # no device_cache_* keys: every use went to the store
    assert (t["vram_hits"], t["vram_misses"]) == (0, 8)
    assert [t["vram_hit_rate"], t["host_hit_rate"], t["disk_rate"]] == pytest.approx([0.0, 1.0, 0.0])


# ------------------------------------------------------------------------------------------------ routing replay


@pytest.mark.parametrize("kind", ["uniform", "zipf"])
def test_route_replay_gives_each_layer_its_next_tokens(kind):
    T, L, E, k = 9, 3, 64, 10
    route = stream.routing(T, L, E, k, kind, seed=1)
    rp = RouteReplay(route)
    first = rp(0, 1)                                           # a 1-token prompt of layer 0
    assert first.shape == (1, k) and first.dtype == np.int64
    np.testing.assert_array_equal(first[0], route[0, 0])
    chunk = rp(0, 3)                                           # then a 3-token chunk: rows 1..3
    assert chunk.shape == (3, k)
    np.testing.assert_array_equal(chunk, route[1:4, 0])
    np.testing.assert_array_equal(rp(2, 1)[0], route[0, 2])   # layers advance independently
    for row in route.reshape(-1, k):
        assert len(set(row.tolist())) == k and row.min() >= 0 and row.max() < E
    assert rp.wrapped == 0
    assert rp(1, T + 2).shape == (T + 2, k) and rp.wrapped == 1   # past the end: wraps, and says so


def test_zipf_routing_is_skewed_and_uniform_is_not():
    T, L, E, k = 400, 1, 64, 4
    counts = {kind: np.bincount(stream.routing(T, L, E, k, kind, seed=0).ravel(), minlength=E)
              for kind in ("uniform", "zipf")}
    top8 = {kind: np.sort(c)[::-1][:8].sum() / c.sum() for kind, c in counts.items()}
    assert top8["uniform"] < 0.25 < top8["zipf"]               # 8 of 64 experts: 1/8 of the uses when uniform


def test_route_replay_rejects_a_flat_route():
    with pytest.raises(ValueError, match="tokens, layers, k"):
        RouteReplay(np.zeros((4, 10), np.int64))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_parses_the_cuda_flags():
    a = stream.build_parser().parse_args(["--device", "cuda", "--gpu-memory-budget", "24GB", "--cold", "--top-k",
                                          "4", "--routing", "zipf", "--mode", "direct", "--budget", "8GB",
                                          "--warmup", "2"])
    assert (a.device, a.gpu_memory_budget, a.cold, a.top_k, a.routing, a.mode, a.budget, a.warmup) == \
        ("cuda", 24 * GB, True, 4, "zipf", "direct", 8 * GB, 2)
    d = stream.build_parser().parse_args([])
    assert (d.device, d.gpu_memory_budget, d.cold, d.warmup) == ("cpu", None, False, 4)


@no_cuda
def test_device_cuda_without_a_gpu_is_a_clear_error(monkeypatch, capsys, tmp_path):
    import fmoe.storage.synth as synth_mod
    from fmoe.cli import main
    monkeypatch.setattr(synth_mod, "synth", lambda *a, **kw: pytest.fail("synth started without a GPU"))
    with pytest.raises(SystemExit) as e:
        main(["bench", "stream", "--device", "cuda", "--model-dir", str(tmp_path / "m"), "--tokens", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "--device cuda" in err and "no CUDA GPU" in err and "Traceback" not in err


@pytest.mark.parametrize("flags, named", [(["--engine", "store"], "--engine store"),
                                          (["--memory-cap", "4GB"], "--memory-cap"),
                                          (["--overlap", "on"], "--overlap on")])
def test_cpu_only_flags_with_device_cuda_are_errors(flags, named, capsys):
    with pytest.raises(SystemExit) as e:
        stream.main(["--device", "cuda", *flags])
    assert e.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--gpu-memory-budget", "24GB"], ["--cold"], ["--routing", "router"]])
def test_gpu_flags_on_the_cpu_path_are_errors(flags, capsys, monkeypatch):
    monkeypatch.setattr(stream, "disk_bandwidth", lambda *a, **kw: pytest.fail("the CPU bench started"))
    with pytest.raises(SystemExit) as e:
        stream.main(flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--device cuda only" in err and flags[0] in err


# ------------------------------------------------------------------------------------------------ a run's summary


def _raw_run(times):
    nb = 7_077_888                                             # a 397B-shaped 4-bit expert
    T, L, k = len(times), 12, 10
    uses = T * L * k
    before = {"device_cache_hits": 500, "device_cache_misses": 700, "cache_hits": 0, "cache_misses": 700,
              "bytes_read": 700 * nb, "page_cache_bytes": 700 * nb, "disk_bytes": 0, "mode": "page-cache"}
    vh, host = int(uses * 0.75), uses - int(uses * 0.75)
    after = dict(before, device_cache_hits=500 + vh, device_cache_misses=700 + host, cache_misses=700 + host,
                 bytes_read=(700 + host) * nb, page_cache_bytes=(700 + host) * nb, device_resident_bytes=4 * GB)
    raw = dict(times=times, warm=[0.5, 0.2], prompt_s=0.9, load_s=3.0, before=before, after=after,
               expert_calls=uses, expert_wait_s=0.1, layers=L, expert_nbytes=nb,
               non_expert_bytes=int(0.9 * GB) + 2 * 10**8, embed_bytes=2 * 10**8, embed_not_read_bytes=2 * 10**8,
               page_cache_dropped=None, finite=True, gpu_peak_allocated_bytes=6 * GB, route_wrapped=0)
    spec = dict(mode="page-cache", policy="lru", routing="uniform", top_k=k, budget=0, cold=False, warmup=2,
                gpu_memory_budget=int(4.8 * GB), gpu_memory_budget_60=24 * GB)
    bw = {"hbm_gbps": 4000.0, "h2d_pinned_gbps": 50.0, "disk_read_gbps": 5.0}
    return raw, spec, bw, nb


def test_summarize_run_numbers():
    times = [0.10, 0.12, 0.11, 0.09]
    raw, spec, bw, nb = _raw_run(times)
    r = summarize_run(raw, spec, bw)
    T = 4
    assert r["tokens"] == T and r["wall_s"] == pytest.approx(0.42)
    assert r["tok_s"] == pytest.approx(T / 0.42, rel=1e-3)
    assert r["ms_per_token_median"] == pytest.approx(105.0) and r["ms_per_token_mean"] == pytest.approx(105.0)
    assert r["tok_s_projected_60_layers"] == pytest.approx(T / 0.42 * 12 / 60, rel=1e-3)
    assert [r["vram_hit_rate"], r["host_hit_rate"], r["disk_rate"]] == pytest.approx([0.75, 0.25, 0.0])
    # VRAM term: 360 hit experts + 4 tokens x 0.9 GB non-expert (embedding excluded); host: 120 experts
    vram_bytes = 360 * nb + T * int(0.9 * GB)
    assert r["vram_bytes"] == vram_bytes and r["non_expert_read_bytes_per_token"] == int(0.9 * GB)
    serial = vram_bytes / 4000e9 + 120 * nb / 50e9
    assert r["bound"]["serial_s"] == pytest.approx(serial, rel=1e-4)
    assert r["bound"]["overlapped_s"] == pytest.approx(max(vram_bytes / 4000e9, 120 * nb / 50e9), rel=1e-4)
    assert r["fraction_of_bound"] == pytest.approx(serial / 0.42, abs=1e-4)
    assert r["bound_tok_s"] == pytest.approx(T / serial, rel=1e-3)
    assert r["bound_experts_only"]["serial_s"] == pytest.approx(360 * nb / 4000e9 + 120 * nb / 50e9, rel=1e-4)
    json.dumps(r)                                              # JSON-ready


def test_summary_lines_say_what_is_projected_and_which_bound_is_the_headline():
    raw, spec, bw, _ = _raw_run([0.1, 0.1])
    r = summarize_run(raw, spec, bw)
    text = summary_lines(r, bw)
    assert f"{r['tok_s']:.2f} tok/s" in text
    assert "serial sum (the headline)" in text and "overlapped" in text
    assert "projected to 60 layers" in text and "a projection" in text and "x 12/60" in text
    assert "VRAM 0.75, host RAM 0.25, disk 0.00" in text


# ------------------------------------------------------------------------------------------------ on a GPU


@cuda
def test_bandwidths_on_the_gpu():
    hbm = stream_cuda.hbm_bandwidth(256 << 20, reps=2)
    h2d = stream_cuda.h2d_bandwidth(64 << 20, reps=2)
    assert 100 < hbm["hbm_gbps"] < 20000
    assert 1 < h2d["h2d_pinned_gbps"] < 1000 and h2d["h2d_pageable_gbps"] > 0


@cuda
@pytest.mark.parametrize("routing, mode, budget", [("uniform", "page-cache", "40GB"), ("zipf", "direct", "1GB"),
                                                   ("router", "page-cache", "40GB")])
def test_bench_stream_cuda_end_to_end(routing, mode, budget, tmp_path_factory, capsys):
    model = tmp_path_factory.getbasetemp() / "stream_cuda_tiny"      # shared by the parametrized runs
    out = tmp_path_factory.mktemp("out") / "r.json"
    rc = stream.main(["--device", "cuda", "--like", "tiny", "--layers", "3", "--experts", "16", "--top-k", "4",
                      "--tokens", "4", "--warmup", "2", "--mode", mode, "--routing", routing,
                      "--gpu-memory-budget", budget, "--model-dir", str(model), "--io-threads", "2",
                      "--out", str(out), "--json"])
    assert rc == 0
    res = json.loads(out.read_text())
    whole = 40 * GB if budget == "40GB" else GB
    assert res["gpu_memory_budget"] == int(whole * 3 / 60) and res["gpu_memory_budget_60_layers"] == whole
    run = res["runs"][0]
    assert run["mode"] == mode and run["routing"] == routing
    assert run["tokens"] == 4 and run["finite"]
    assert run["route_wrapped"] == (None if routing == "router" else 0)
    assert run["tiers"]["expert_uses"] == 4 * 3 * 4
    assert math.isclose(run["vram_hit_rate"] + run["host_hit_rate"] + run["disk_rate"], 1.0, abs_tol=1e-3)
    assert 0 < run["fraction_of_bound"] and run["bound"]["serial_s"] > 0
    assert run["tok_s_projected_60_layers"] == pytest.approx(run["tok_s"] * 3 / 60, rel=1e-2)
