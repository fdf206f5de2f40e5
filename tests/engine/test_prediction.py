"""Expert prediction "auto" (the default): off while every expert comes from memory, on again once the store reads
experts from the disk (fmoe.engine.model.Model.set_prediction), and the same logits either way."""
from __future__ import annotations

import numpy as np
import pytest

from fmoe.engine.model import PREDICTION_WINDOW, Model
from fmoe.storage import synth as synth_mod


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return synth_mod.synth(tmp_path_factory.mktemp("predict") / "m", "tiny", layers=3, experts=8, progress=False,
                           fsync=False)


def _steps(m, cache, n, seed):
    toks = np.random.default_rng(seed).integers(1, 1000, size=n)
    return np.stack([m.ops.to_numpy(m.forward([int(t)], cache)) for t in toks])


def _predicting(m) -> list[bool]:
    return [layer.predict for layer in m.layers]


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
def test_auto_prediction_follows_disk_reads(model_dir, mode):
    """Page-cache mode: the files were just written, so every expert is in the page cache. Direct mode: an engine
    cache that holds every expert, filled by the first steps. Either way prediction turns off; in direct mode,
    emptying the cache makes the store read from the disk again, and it turns back on."""
    stream = {"mode": mode, "memory_budget": 0 if mode == "page-cache" else 64 << 20}
    with Model.load(model_dir, backend="torch", stream=stream) as m, \
            Model.load(model_dir, backend="torch", stream=stream, predict_experts=False) as ref:
        assert m.predict_experts == "auto" and all(_predicting(m))        # starts on
        c, rc = m.new_cache(), ref.new_cache()
        prompt = list(range(3, 3 + 64))                                   # touches (nearly) every expert
        m.forward(prompt, c)
        ref.forward(prompt, rc)
        # the first window only takes the counter's reading; a window with no disk reads turns prediction off
        got = _steps(m, c, 3 * PREDICTION_WINDOW, seed=1)
        want = _steps(ref, rc, 3 * PREDICTION_WINDOW, seed=1)
        assert not any(_predicting(m)), m.stats().store
        np.testing.assert_array_equal(got, want)
        if mode == "direct":
            m.experts.store.clear()                                       # every expert from the disk again
            ref.experts.store.clear()
            before = m.stats().store["disk_bytes"]
            got = _steps(m, c, PREDICTION_WINDOW, seed=2)
            want = _steps(ref, rc, PREDICTION_WINDOW, seed=2)
            assert m.stats().store["disk_bytes"] > before
            assert all(_predicting(m))
            np.testing.assert_array_equal(got, want)


def test_prediction_on_and_off_are_kept(model_dir):
    for on in (True, False):
        with Model.load(model_dir, backend="torch", stream={"mode": "page-cache", "memory_budget": 0},
                        predict_experts=on) as m:
            c = m.new_cache()
            _steps(m, c, 2 * PREDICTION_WINDOW + 1, seed=3)
            assert _predicting(m) == [on] * len(m.layers) and m.predict_experts is on
