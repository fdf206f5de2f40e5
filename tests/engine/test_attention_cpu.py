"""TorchBackend.attention on the CPU for one query position (decode): the batched-products path against torch's own
SDPA (with the KV heads repeated for GQA) as the reference, on one thread and, past THREADED_ATTENTION_POSITIONS, on
several; torch's thread count is restored after. Prefill (several positions) keeps SDPA with its causal mask."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fmoe.engine.backends import torch as torch_backend
from fmoe.engine.backends.torch import TorchBackend


def _reference(q, k, v, scale, causal_offset):
    H, T, _ = q.shape
    r = H // k.shape[0]
    k, v = k.repeat_interleave(r, dim=0), v.repeat_interleave(r, dim=0)
    i = torch.arange(T)[:, None] + causal_offset
    mask = torch.arange(k.shape[1])[None, :] <= i
    return F.scaled_dot_product_attention(q[None].double(), k[None].double(), v[None].double(), attn_mask=mask,
                                          scale=scale)[0]


@pytest.mark.parametrize("heads", [(32, 2), (8, 8), (6, 3)])
@pytest.mark.parametrize("positions", [1, 37, 300])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_decode_attention_matches_sdpa(heads, positions, threads, monkeypatch):
    monkeypatch.setenv("FMOE_THREADS", threads)
    monkeypatch.setattr(torch_backend, "THREADED_ATTENTION_POSITIONS", 32)    # the threaded path from 32 on
    ops = TorchBackend("float32")
    H, Hkv = heads
    g = torch.Generator().manual_seed(positions * 100 + H)
    q, k, v = (torch.randn(n, t, 64, generator=g) for n, t in ((H, 1), (Hkv, positions), (Hkv, positions)))
    before = torch.get_num_threads()
    with ops.step_context(1):
        inside = torch.get_num_threads()
        out = ops.attention(q, k, v, 0.125, positions - 1)
        assert torch.get_num_threads() == inside == 1
    assert torch.get_num_threads() == before
    ref = _reference(q, k, v, 0.125, positions - 1)
    assert out.shape == (H, 1, 64) and out.dtype == torch.float32
    assert (out.double() - ref).abs().max().item() <= 3e-6 * ref.abs().max().item()


def test_prefill_attention_keeps_the_causal_mask():
    ops = TorchBackend("float32")
    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(8, 5, 32, generator=g), torch.randn(2, 9, 32, generator=g), torch.randn(2, 9, 32, generator=g)
    out = ops.attention(q, k, v, 0.2, 4)
    assert (out.double() - _reference(q, k, v, 0.2, 4)).abs().max().item() <= 1e-5
