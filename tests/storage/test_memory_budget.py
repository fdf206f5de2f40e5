"""Issue #16 item 11, "memory stays within what the user set": the resident-memory formula of
fmoe/storage/expert_store.py (``resident_estimate``, ``budget_for_memory``, ``memory_floor``; documented in
docs/reference/streaming-format.md, Memory) checked on a real decode.

A synthetic model at a Qwen3.5 MoE preset's dimensions (35B-A3B: the smallest with the real vocabulary, so the
non-expert weights -- 0.61 GB, kept quantized as stored -- are most of the process, as on the real models) with
2 layers x 32 experts (113 MB of experts, more than the cache budget: the run evicts) decodes 8 tokens in direct
mode in a child process, so the peak RSS (VmHWM) is that run's alone.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from fmoe.storage.expert_store import budget_for_memory, memory_floor, resident_estimate
from fmoe.storage.stream_layout import StreamingLayout

IO_THREADS = 2
TOKENS = 8
MiB = 1 << 20

CHILD = """
import json, sys
spec = json.loads(sys.argv[1])
import torch
from fmoe.engine.generate import Generation
from fmoe.engine.model import Model
torch.set_num_threads(1)
m = Model.load(spec["model"], backend="torch", dtype="bfloat16",
               stream={"mode": "direct", "memory_budget": spec["budget"], "io_threads": spec["io_threads"]})
toks = [st.token_id for st in Generation(m, [1, 2, 3], max_tokens=spec["tokens"])]
hwm = next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(json.dumps({"peak_rss": hwm, "tokens": len(toks), "store": m.stats().store}))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from fmoe.storage.synth import synth

    d = synth(tmp_path_factory.mktemp("mem") / "m", "qwen3.5-35b-a3b", layers=2, experts=32, bits=4, top_k=8,
              progress=False, fsync=False)
    yield d
    shutil.rmtree(d, ignore_errors=True)                     # 0.7 GB: not left for pytest's kept tmp dirs


def decode_in_child(model_dir, budget: int) -> dict:
    spec = {"model": str(model_dir), "budget": budget, "io_threads": IO_THREADS, "tokens": TOKENS}
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_peak_rss_within_cap_and_estimate(model_dir):
    layout = StreamingLayout(model_dir)
    k = layout.config_raw["num_experts_per_tok"]
    stride = max(L.stride for L in layout.layers)
    floor = memory_floor(layout, IO_THREADS)
    cap = floor + 48 * MiB                                   # room for a cache smaller than the experts (113 MB)
    budget = budget_for_memory(cap, layout, IO_THREADS)
    est = resident_estimate(layout, budget, IO_THREADS)
    assert budget == 48 * MiB and est["total"] == cap       # the largest budget whose estimate fits the cap
    assert est["non_expert"] == layout.non_expert_file.stat().st_size

    out = decode_in_child(model_dir, budget)
    s = out["store"]
    assert out["tokens"] == TOKENS and s["mode"] == "direct" and s["memory_budget"] == budget
    assert s["bytes_read"] > budget                          # the cache filled and evicted
    assert s["peak_resident_bytes"] <= budget + 3 * k * stride   # the budget + the "held" term of the formula
    peak = out["peak_rss"]
    assert peak <= est["total"], f"peak RSS {peak / MiB:.0f} MiB > estimate {est['total'] / MiB:.0f} MiB: {est}"
    assert peak <= cap
    assert peak >= est["non_expert"]                         # sanity: the run really held the weights


def test_cap_below_the_floor_is_refused(model_dir, monkeypatch, capsys):
    from fmoe.bench import stream
    from fmoe.cli import main

    layout = StreamingLayout(model_dir)
    floor = memory_floor(layout, IO_THREADS)
    assert budget_for_memory(floor - 1, layout, IO_THREADS) == 0 == budget_for_memory(floor, layout, IO_THREADS)
    # the bench measures bandwidths before it plans the budget: not needed to see the refusal
    monkeypatch.setattr(stream, "disk_bandwidth", lambda *a, **kw: {"disk_read_gbps": 1.0,
                                                                     "disk_read_gbps_by_qd": {}, "disk_seq_gbps": 1.0})
    monkeypatch.setattr(stream, "memory_bandwidth", lambda *a, **kw: {"mem_read_gbps": 1.0})
    monkeypatch.setattr(stream, "run_child", lambda *a, **kw: pytest.fail("a run under a cap below the floor started"))
    argv = ["bench", "stream", "--model-dir", str(model_dir), "--memory-cap", str(floor - 64 * MiB),
            "--io-threads", str(IO_THREADS), "--mode", "direct", "--overlap", "on", "--tokens", "2", "--json"]
    try:                          # an FmoeError (rc 2, "fmoe bench: error: ...") or a SystemExit with the message
        rc, msg = main(argv), capsys.readouterr().err
    except SystemExit as e:
        rc, msg = 2, str(e.code)
    assert rc == 2 and "below what this model needs with no expert cache at all" in msg
    assert f"{floor / 2**30:.2f} GiB" in msg
