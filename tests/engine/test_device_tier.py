"""The GPU expert tier (fmoe.engine.device_experts.DeviceExperts), checked on the CPU with the torch reference of the
grouped mat-vec (the same slot pools, LRU and copy path as on CUDA; the Triton kernel itself is tested in
tests/kernels/test_triton_qmv.py and the whole CUDA path in tests/engine/test_cuda.py): the same logits as the
plain engine, hits served without a store read, LRU eviction within the budget, the shared expert in the pool,
a budget too small for one token or for the GPU named in the error."""
import numpy as np
import pytest
import torch

from fmoe.engine.device_experts import DeviceExperts, _Pool
from fmoe.engine.model import Model
from fmoe.errors import FmoeError
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


def _tiered(path, budget):
    """The CPU model with its experts served by a DeviceExperts tier of ``budget`` bytes (as Model wires it on
    CUDA)."""
    m = Model.load(path, stream={"mode": "page-cache"}, predict_experts=False)
    tier = DeviceExperts(m.ops, m.experts.store, m.cfg, budget)
    m.experts = tier
    for layer in m.layers:
        layer.moe.experts = tier
        tier.register_shared(layer.i, layer.moe.shared)
    return m, tier


@pytest.mark.parametrize("experts", [1, 3, 1000])
def test_device_tier_same_logits_and_lru(streamed, experts):
    ids = [int(x) for x in np.random.default_rng(0).integers(3, 300, size=20)]
    plain = Model.load(streamed, stream={"mode": "page-cache"}, predict_experts=False)
    ref = _logits(plain, ids)
    one = plain.checkpoint.layout.layers[0].stride
    tiered, tier = _tiered(streamed, experts * one)
    if experts >= 1000:
        assert tier.preload_if_fits() and tier.complete        # every expert resident: slots looked up on the device
    got = _logits(tiered, ids)
    # the reference grouped mat-vec (float32 dequantize + matmul) against the native kernel (int16 activations)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3 * np.abs(ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    s = tiered.experts.stats()
    k, L, E = tiered.cfg.num_experts_per_tok, tiered.cfg.num_hidden_layers, tiered.cfg.num_experts
    assert s["device_cache_budget"] == max(experts, k) * one if experts < 1000 else L * E * one
    assert s["device_resident_bytes"] <= s["device_cache_budget"]
    assert s["device_shared_pooled"] == L          # the tiny model's shared expert has the routed experts' shape
    if experts >= 1000:
        assert s["device_cache_evictions"] == 0 and s["device_cache_misses"] == 0 and s["device_cache_hits"] > 0
        assert s["reads"] == L * E                  # each expert read from the store once, at preload
    else:
        assert s["device_cache_evictions"] > 0
        assert s["reads"] == s["device_cache_misses"]           # a miss is read once, slotted or not
        copied = s["device_cache_misses"] - s["device_overflows"]   # prefill misses beyond the pool run apart
        assert s["device_bytes_copied"] == copied * plain.checkpoint.layout.layers[0].sizes[0]
    plain.close()
    tiered.close()


def test_route_override_takes_the_given_experts(streamed):
    m, tier = _tiered(streamed, 1000 * 4096 * 64)
    E, k = m.cfg.num_experts, m.cfg.num_experts_per_tok
    m.set_route_override(lambda layer, T: np.tile(np.arange(E - k, E), (T, 1)))
    cache = m.new_cache()
    m.forward([5, 6], cache)
    m.forward([7], cache)
    used = {e for (layer, e) in tier._lru}
    assert used == set(range(E - k, E))
    m.close()


def test_too_small_for_one_token_or_for_the_gpu_names_the_budget(streamed, monkeypatch):
    m, tier = _tiered(streamed, 0)
    m.set_experts_per_token(m.cfg.num_experts)          # more experts than the minimal pool (k slots) holds
    with pytest.raises(FmoeError, match="raise --gpu-memory-budget or lower the experts per token"):
        m.forward([5], m.new_cache())
    m.close()

    m, tier = _tiered(streamed, 1 << 30)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
    monkeypatch.setattr(_Pool, "__init__", oom)
    with pytest.raises(FmoeError, match=r"budget 1\.00 GiB\): lower --gpu-memory-budget"):
        m.forward([5, 6, 7], m.new_cache())
    m.close()


def test_snapshot_of_a_static_state_is_a_copy():
    from fmoe.engine.cache import AttentionState, KVBuffer, LinearState, ModelCache

    buf = KVBuffer(torch.zeros(1, 512, 4), torch.zeros(1, 512, 4), 512)
    buf.k[:, :3] = 1.0
    buf.filled = 3
    lin = LinearState(torch.ones(3, 8), torch.ones(2, 4, 4), static=True)
    cache = ModelCache([AttentionState(buf, 3, static=True), lin], [1, 2, 3])
    snap = cache.snapshot()
    lin.recurrent.mul_(5)                                # the live state is updated in place
    buf.k[:, 3] = 9.0
    assert torch.equal(snap.layers[1].recurrent, torch.ones(2, 4, 4)) and not snap.layers[1].static
    assert snap.layers[0].buf is not buf and snap.layers[0].length == 3
    assert float(snap.layers[0].buf.k[:, 3].abs().sum()) == 0.0 and float(snap.layers[0].buf.k[:, :3].min()) == 1


def test_in_memory_quantized_checkpoint_through_the_tier(tmp_path):
    """An mlx-lm quantized checkpoint (experts stacked per tensor, not one region each) as the tier's host source
    (CheckpointExperts): the template is built from the first expert, each expert is copied array by array, and
    decoding gives the plain in-memory engine's logits."""
    pytest.importorskip("mlx_lm")
    import tiny_models

    from fmoe.engine.device_experts import CheckpointExperts

    tiny_models.build_hf(tmp_path / "hf", "stream", seed=4)
    tiny_models.to_release_layout(tmp_path / "hf", tmp_path / "release")
    tiny_models.mlx_convert(tmp_path / "release", tmp_path / "q4", 4)
    plain = Model.load(tmp_path / "q4")
    ids = [int(x) for x in np.random.default_rng(1).integers(3, 300, size=16)]
    ref = _logits(plain, ids)
    m = Model.load(tmp_path / "q4")
    host = CheckpointExperts(m.checkpoint)
    assert DeviceExperts.supports(host, m.cfg)
    one = host.template(0).stride
    tier = DeviceExperts(m.ops, host, m.cfg, 3 * one)
    m.experts = tier
    for layer in m.layers:
        layer.moe.experts = tier
        tier.register_shared(layer.i, layer.moe.shared)
    got = _logits(m, ids)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3 * np.abs(ref).max())
    s = tier.stats()
    assert s["device_cache_misses"] > 0 and s["device_cache_evictions"] > 0
    assert s["device_shared_pooled"] == m.cfg.num_hidden_layers      # mlx-lm quantizes the shared expert alike


def test_gate_up_vouches_for_its_slots_only_after_another_kernel(streamed, monkeypatch):
    """moe_decode tells gate+up that its slot table is ready (the CUDA bulk kernel may then read it before waiting for
    the previous kernel) only where a kernel that does not write the slots runs between their last write and gate+up:
    the routing weights' renormalisation, their cast to float32, or their concatenation with the pooled shared
    expert's weight; the down projection always (the kernel before it made h). Every (renorm, probability dtype,
    shared expert pooled) case, the tier complete or not."""
    from fmoe.engine import device_experts as de

    seen = []
    real_gate_up, real_qmv = de.grouped_gate_up, de.grouped_qmv

    def gate_up(*a):
        seen.append(("gate_up", a[6]))
        return real_gate_up(*a)

    def qmv(*a):
        seen.append(("qmv", a[7]))
        return real_qmv(*a)

    monkeypatch.setattr(de, "grouped_gate_up", gate_up)
    monkeypatch.setattr(de, "grouped_qmv", qmv)
    one = Model.load(streamed, stream={"mode": "page-cache"}, predict_experts=False).checkpoint.layout.layers[0].stride
    for budget in (3, 1000):
        m, tier = _tiered(streamed, budget * one)
        if budget >= 1000:
            assert tier.preload_if_fits() and tier.complete
        tier._pools()                                      # (pools the shared experts that match the template)
        layer = min(tier.shared_slot)                       # a layer whose shared expert is pooled
        pooled = dict(tier.shared_slot)
        x = torch.randn(1, m.cfg.hidden_size)
        for renorm in (False, True):
            for dtype in (torch.float32, torch.bfloat16):
                for shared in (False, True):
                    tier.shared_slot = pooled if shared else {}
                    probs = torch.softmax(torch.randn(m.cfg.num_experts), 0).to(dtype)
                    seen.clear()
                    y, with_shared = tier.moe_decode(layer, x, probs, m.cfg.num_experts_per_tok, renorm,
                                                     torch.tensor(0.5))
                    assert with_shared == shared and torch.isfinite(y).all()
                    assert seen == [("gate_up", renorm or dtype != torch.float32 or shared), ("qmv", True)], \
                        (budget, renorm, dtype, shared, seen)
        tier.shared_slot = pooled
