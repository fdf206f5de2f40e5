"""The CUDA path (bf16) against the CPU path (issue 13, item 4), in every tier configuration: all experts in VRAM, a
VRAM budget of one expert, direct and page-cache reads; on a tiny streamed model (random prompt) and on the demo
model (a real chat prompt with tools). Checked: the next-token logits at the end of the prompt within the bf16 bound
(relative error <= 1e-2 against the CPU in float32), and 16 greedy tokens identical to the CPU's at the same dtype.
Measured beside it (bench/results/cuda_stream.md): over the 16 decode steps the CUDA logits stay within 0.0085
(tiny) and 0.023 (demo) of the CPU's bf16 logits; the tiny random model's bf16 greedy tokens differ from its
float32 ones on the CPU too. Skips where no GPU exists (run on the H200 machine: bench/device/gpu_engine.sh)."""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)

from fmoe.engine.model import Model  # noqa: E402
from fmoe.storage.convert import convert  # noqa: E402


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("cuda")
    tiny_models.build_hf(root / "hf", "stream", seed=3)
    return convert(root / "hf", root / "s4", bits=4, group_size=64, progress=False, fsync=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from fmoe.demo import MODEL_DIR

    return convert(MODEL_DIR, tmp_path_factory.mktemp("demo") / "s4", bits=4, group_size=64, progress=False,
                   fsync=False)


def _greedy(model, ids, n=16):
    """(logits of the last prompt position and of each decode step [n + 1, vocab], the n greedy tokens)."""
    cache = model.new_cache()
    rows = [model.ops.to_numpy(model.forward(ids, cache)).astype(np.float32)]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(rows[-1])))
        rows.append(model.ops.to_numpy(model.forward([out[-1]], cache)).astype(np.float32))
    return np.stack(rows), out


def _prompt(which, path):
    if which == "streamed":
        return [int(x) for x in np.random.default_rng(0).integers(3, 300, size=24)]
    from fmoe.engine.loader import load_tokenizer

    tok = load_tokenizer(path)
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the weather in Tokyo?"}],
                                              tools=DEMO_TOOLS, add_generation_prompt=True))


# two of the demo model's tools, as fmoe.tools.demo.tool_schemas() gives them (the GPU machine lacks pydantic)
DEMO_TOOLS = json.loads((Path(__file__).resolve().parents[1] / "data" / "demo_tools.json").read_text())

TIERS = [("page-cache", None), ("page-cache", 1), ("direct", None), ("direct", 1)]


@pytest.mark.parametrize("mode, experts_in_vram", TIERS)
@pytest.mark.parametrize("which", ["streamed", "demo"])
def test_cuda_matches_cpu(request, which, mode, experts_in_vram):
    path = request.getfixturevalue(which)
    ids = _prompt(which, path)
    cpu32 = Model.load(path, backend="torch", dtype="float32", stream={"mode": mode, "memory_budget": 64 << 20})
    ref32, _ = _greedy(cpu32, ids)
    cpu16 = Model.load(path, backend="torch", dtype="bfloat16", stream={"mode": mode, "memory_budget": 64 << 20})
    ref16, ref_tokens = _greedy(cpu16, ids)
    one_expert = cpu32.checkpoint.layout.layers[0].sizes[0] if experts_in_vram == 1 else None
    gpu = Model.load(path, backend="torch", dtype="bfloat16", device="cuda",
                     stream={"mode": mode, "memory_budget": 64 << 20}, gpu_memory_budget=one_expert)
    got, tokens = _greedy(gpu, ids)
    rel = np.abs(got[0] - ref32[0]).max() / np.abs(ref32[0]).max()
    assert rel <= 1e-2, rel
    assert tokens == ref_tokens
    s = gpu.experts.stats()
    assert s["device_cache_hits"] + s["device_cache_misses"] > 0
    if experts_in_vram == 1:   # the pool holds at least one token's experts (k slots)
        assert s["device_cache_budget"] == gpu.experts_per_token * cpu32.checkpoint.layout.layers[0].stride
        assert s["device_resident_bytes"] <= s["device_cache_budget"] and s["device_cache_evictions"] > 0
    else:
        assert s["device_cache_hits"] > 0
    for m in (cpu32, cpu16, gpu):
        m.close()


def test_page_cache_dma_matches_pinned_copies(streamed, monkeypatch):
    """Page-cache mode with no engine cache and a VRAM tier of one token's experts: the layer files (just written, so
    in the page cache) are registered with CUDA and every miss is copied straight from the file's pages; the logits
    are the same bits as with the registration turned off (misses read into pinned buffers), and match the CPU."""
    ids = _prompt("streamed", streamed)
    stream = {"mode": "page-cache", "memory_budget": 0}
    cpu16 = Model.load(streamed, backend="torch", dtype="bfloat16", stream=stream)
    _, ref_tokens = _greedy(cpu16, ids)
    runs = {}
    for pin in ("", "0"):
        if pin:
            monkeypatch.setenv("FMOE_PIN_PAGE_CACHE", pin)
        else:
            monkeypatch.delenv("FMOE_PIN_PAGE_CACHE", raising=False)
        gpu = Model.load(streamed, backend="torch", dtype="bfloat16", device="cuda", stream=stream,
                         gpu_memory_budget=1)        # one token's experts
        runs[pin] = _greedy(gpu, ids) + (gpu.experts.stats(),)
        gpu.close()
    (dma, dma_tokens, s), (pinned, pinned_tokens, s0) = runs[""], runs["0"]
    layers = cpu16.checkpoint.config.num_hidden_layers
    assert s["device_dma_layers"] == layers and s["device_dma_pinned_bytes"] > 0 and s["zero_copy_reads"] > 0
    assert s0["device_dma_layers"] == 0 and s0["zero_copy_reads"] == 0
    assert s["device_cache_misses"] == s0["device_cache_misses"] > 0
    np.testing.assert_array_equal(dma, pinned)
    assert dma_tokens == pinned_tokens == ref_tokens
    cpu16.close()


def _decode(model, prompt, n, cache=None):
    cache = cache if cache is not None else model.new_cache()
    rows = [model.ops.to_numpy(model.forward(prompt, cache)).astype(np.float32)]
    toks = []
    for _ in range(n):
        toks.append(int(np.argmax(rows[-1])))
        rows.append(model.ops.to_numpy(model.forward([toks[-1]], cache)).astype(np.float32))
    return np.stack(rows), toks, cache


def _forced(model, prompt, seq):
    """Logits after the prompt and after each token of ``seq`` fed one at a time (teacher forcing: a near tie of
    the random model cannot send the two runs down different paths)."""
    cache = model.new_cache()
    rows = [model.ops.to_numpy(model.forward(prompt, cache)).astype(np.float32)]
    rows += [model.ops.to_numpy(model.forward([t], cache)).astype(np.float32) for t in seq]
    return np.stack(rows)


def test_graph_replay_matches_eager_across_capacity_growth(streamed, monkeypatch):
    """A captured step (fmoe/engine/cuda_graph.py) gives the eager step's logits, also after the context outgrows
    the graph's KV capacity (re-allocated, captured again)."""
    rng = np.random.default_rng(1)
    ids = [int(x) for x in rng.integers(3, 300, size=505)]
    seq = [int(x) for x in rng.integers(3, 300, size=270)]
    graphed = Model.load(streamed, backend="torch", dtype="bfloat16", device="cuda", stream={"mode": "page-cache"})
    assert graphed.experts.complete and graphed._graph_eligible()
    got = _forced(graphed, ids, seq)
    assert graphed._graph is not False and graphed._graph.captures == 2       # 768 positions, then 1536
    monkeypatch.setenv("FMOE_CUDA_GRAPH", "0")
    eager = Model.load(streamed, backend="torch", dtype="bfloat16", device="cuda", stream={"mode": "page-cache"})
    ref = _forced(eager, ids, seq)
    assert eager._graph is None
    rel = np.abs(got - ref).max(-1) / np.abs(ref).max(-1)
    assert rel.max() <= 1e-2, (rel.max(), int(rel.argmax()))
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.97
    s, e = graphed.stats(), eager.stats()
    assert s.expert_calls == e.expert_calls and s.store["device_cache_hits"] == e.store["device_cache_hits"]
    for m in (graphed, eager):
        m.close()


@pytest.mark.parametrize("replayed", [False, True])
def test_segmented_graph_matches_eager_with_tiered_experts(streamed, monkeypatch, replayed):
    """Experts in tiers (a VRAM tier of one token's experts, misses copied from the page cache): the step replays one
    graph per stretch between two layers' experts (SegmentedGraph) and gives the eager step's logits and lookups,
    with the router's choice and with replayed routing (Model.set_route_override)."""
    from fmoe.bench.stream_cuda import RouteReplay
    from fmoe.engine.cuda_graph import SegmentedGraph

    rng = np.random.default_rng(4)
    ids = [int(x) for x in rng.integers(3, 300, size=9)]
    seq = [int(x) for x in rng.integers(3, 300, size=40)]
    runs = {}
    for graphs in ("1", "0"):
        monkeypatch.setenv("FMOE_CUDA_GRAPH", graphs)
        m = Model.load(streamed, backend="torch", dtype="bfloat16", device="cuda",
                       stream={"mode": "page-cache", "memory_budget": 0}, gpu_memory_budget=1)
        if replayed:
            E, k, L = m.cfg.num_experts, m.experts_per_token, m.cfg.num_hidden_layers
            r = np.random.default_rng(5)
            m.set_route_override(RouteReplay(np.stack([[r.choice(E, k, replace=False) for _ in range(L)]
                                                       for _ in range(len(ids) + len(seq))])))
        assert not m.experts.complete and m._graph_eligible() == (graphs == "1")
        runs[graphs] = (_forced(m, ids, seq), m.stats(), m._graph, m.cfg.num_hidden_layers)
        m.close()
    (got, s, graph, layers), (ref, e, _, _) = runs["1"], runs["0"]
    assert isinstance(graph, SegmentedGraph) and graph.captures == 1
    assert len(graph.graphs) == len(graph.cuts) + 1 == layers + 1
    rel = np.abs(got - ref).max(-1) / np.abs(ref).max(-1)
    assert rel.max() <= 1e-2, (rel.max(), int(rel.argmax()))
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.97
    assert s.expert_calls == e.expert_calls
    lookups = [x.store["device_cache_hits"] + x.store["device_cache_misses"] for x in (s, e)]
    assert lookups[0] == lookups[1] > 0 and s.store["device_cache_misses"] > 0


def test_graph_snapshot_resume_and_two_caches(demo):
    """Snapshots of a graph-held cache stay what they were; switching caches hands the graph's tensors over."""
    m = Model.load(demo, backend="torch", dtype="bfloat16", device="cuda", stream={"mode": "page-cache"})
    prompt = [int(x) for x in np.random.default_rng(2).integers(3, 300, size=12)]
    _, toks, _ = _decode(m, prompt, 10)
    _, first, cache = _decode(m, prompt, 5)               # the cache holds the prompt and toks[:5]
    assert first == toks[:5]
    snap = cache.snapshot()
    _decode(m, prompt[:4], 3, m.new_cache())              # another cache takes the graph in between
    _, more, _ = _decode(m, [toks[5]], 4, cache)          # the first one resumes: adopted again
    assert more == toks[6:10]
    _, again, _ = _decode(m, [toks[5]], 4, snap)          # and its snapshot still holds the 5-token state
    assert again == more
    m.close()
