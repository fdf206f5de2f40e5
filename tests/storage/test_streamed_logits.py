"""Streamed logits = in-memory logits, in both I/O modes, with an expert budget too small for one layer's experts
(issue 16, item 12; the README's claim)."""
from __future__ import annotations

import numpy as np
import pytest

from fmoe.engine.model import Model
from fmoe.storage import synth as synth_mod
from fmoe.storage.stream_layout import open_streaming


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return synth_mod.synth(tmp_path_factory.mktemp("logits") / "m", "tiny", layers=4, experts=8, progress=False,
                           fsync=False)


def _run(m, ids):
    cache = m.new_cache()
    out = [m.ops.to_numpy(m.forward(ids, cache, all_logits=True))]       # batched prefill
    for t in (5, 17, 3, 250, 9):                                          # then decode steps
        out.append(m.ops.to_numpy(m.forward([t], cache))[None])
    return np.concatenate(out)


@pytest.mark.parametrize("mode,budget_experts", [("page-cache", 0), ("page-cache", 1), ("direct", 1)])
def test_streamed_logits_equal_in_memory(model_dir, mode, budget_experts):
    ids = list(np.random.default_rng(0).integers(1, 1000, size=24))
    ref_model = Model(open_streaming(model_dir), backend="torch")         # experts in memory (no store)
    ref = _run(ref_model, ids)
    stride = open_streaming(model_dir).layout.layers[0].stride
    k = ref_model.cfg.num_experts_per_tok
    budget = budget_experts * stride
    assert budget < k * stride                                            # smaller than one token's experts
    with Model.load(model_dir, backend="torch", stream={"mode": mode, "memory_budget": budget},
                    predict_experts=True) as m:
        got = _run(m, ids)
        s = m.stats()
    assert s.mode == mode and s.bytes_read > 0
    E = ref_model.cfg.num_experts
    assert budget < E * stride                                          # less than one layer's experts
    assert s.store["peak_resident_bytes"] <= max(budget, E * stride)    # over it only inside a get (its own experts)
    if budget:
        assert s.store["evictions"] > 0
    np.testing.assert_array_equal(got, ref)
