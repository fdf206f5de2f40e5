"""fmoe.engine.moe.StreamedExperts: experts the store maps (zero-copy page-cache hits) are prepared once and kept;
experts read into the store's recycled buffers are prepared on every use (their buffers are reused)."""
import numpy as np
import torch

from fmoe.engine.backends.torch import TorchBackend
from fmoe.engine.moe import StreamedExperts
from fmoe.storage import osio
from fmoe.storage.stream_layout import open_streaming
from fmoe.storage.synth import synth


def test_mapped_experts_prepared_once_read_ones_every_time(tmp_path, monkeypatch):
    path = synth(tmp_path / "m", like="tiny", layers=2, experts=8, progress=False, fsync=False)
    ck = open_streaming(path)
    ops = TorchBackend("float32")
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        experts = StreamedExperts(ops, store)
        first = experts.get(1, [2, 5])
        assert store.stats()["zero_copy_reads"] == 2          # the freshly written files are in the page cache
        again = experts.get(1, [5, 2])
        assert again[0] is first[1] and again[1] is first[0]  # the same prepared objects
        rng = np.random.default_rng(0)
        for got, q in zip(again[0], ck.expert(1, 5)):        # and they compute the expert's own weights
            x = torch.from_numpy(rng.standard_normal((1, got.in_features)).astype(np.float32))
            torch.testing.assert_close(got(x), ops.prepare_linear(q)(x))
    monkeypatch.setattr(osio, "pages_resident", lambda addr, n, samples=16: False)   # force reads into buffers
    monkeypatch.setattr(osio, "resident_bytes", lambda fd, off, n: 0)
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        experts = StreamedExperts(ops, store)
        a, b = experts.get(0, [3])[0], experts.get(0, [3])[0]
        assert store.stats()["zero_copy_reads"] == 0 and a is not b
        assert not experts._prepared
