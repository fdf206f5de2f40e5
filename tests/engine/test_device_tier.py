"""The device tier of streamed experts (fmoe.engine.moe.StreamedExperts with a byte budget: VRAM on CUDA), checked on
the CPU backend: the same logits as without it, hits served without a store read, LRU eviction within the budget."""
import numpy as np
import pytest

from fmoe.engine.model import Model
from fmoe.engine.moe import StreamedExperts
from fmoe.storage.convert import convert


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("tier")
    tiny_models.build_hf(root / "hf", "stream", seed=3)
    return convert(root / "hf", root / "s4", bits=4, group_size=64, progress=False, fsync=False)


def _logits(model, ids):
    cache = model.new_cache()
    out = [model.ops.to_numpy(model.forward(ids[:8], cache, all_logits=True))]
    out += [model.ops.to_numpy(model.forward([t], cache))[None] for t in ids[8:]]
    return np.concatenate(out)


@pytest.mark.parametrize("experts", [1, 3, 1000])
def test_device_tier_same_logits_and_lru(streamed, experts):
    ids = [int(x) for x in np.random.default_rng(0).integers(3, 300, size=20)]
    plain = Model.load(streamed, stream={"mode": "page-cache"})
    ref = _logits(plain, ids)
    tiered = Model.load(streamed, stream={"mode": "page-cache"})
    one = tiered.checkpoint.layout.layers[0].sizes[0]
    tiered.experts = StreamedExperts(tiered.ops, tiered.experts.store, device_cache_bytes=experts * one)
    for layer in tiered.layers:
        layer.moe.experts = tiered.experts
    got = _logits(tiered, ids)
    np.testing.assert_array_equal(got, ref)
    s = tiered.experts.stats()
    assert s["device_resident_bytes"] <= experts * one
    if experts >= 1000:   # everything fits: each (layer, expert) is read from the store once
        assert s["device_cache_evictions"] == 0 and s["device_cache_misses"] == len(tiered.experts._device)
        assert s["reads"] == s["device_cache_misses"] and s["device_cache_hits"] > 0
    else:
        assert s["device_cache_evictions"] > 0
    plain.close()
    tiered.close()


def test_device_out_of_memory_names_the_budget_to_lower(streamed, monkeypatch):
    import torch

    from fmoe.errors import FmoeError

    m = Model.load(streamed, stream={"mode": "page-cache"})
    m.experts = StreamedExperts(m.ops, m.experts.store, device_cache_bytes=1 << 30)
    for layer in m.layers:
        layer.moe.experts = m.experts

    def oom(w):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
    monkeypatch.setattr(m.ops, "prepare_linear", oom)
    with pytest.raises(FmoeError, match=r"budget 1\.00 GiB\): lower --gpu-memory-budget"):
        m.forward([5, 6, 7], m.new_cache())
    m.close()
