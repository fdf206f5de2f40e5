"""Streaming layout: writer/reader round trip, alignment, checksums, interrupted writes, synth."""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from fmoe.storage import synth as synth_mod
from fmoe.storage.stream_layout import (ALIGN, MANIFEST, StreamingWriter, is_streaming_layout, open_streaming)
from fmoe.errors import LayoutError
from fmoe.kernels.quant import QuantizedWeight, dequantize, quantize


def _tiny_cfg(layers=2, experts=4):
    return synth_mod.make_config("tiny", layers=layers, experts=experts)


def _build(path: Path, layers=2, experts=4, bits=4, gs=64, seed=0):
    """A small layout with real quantized weights; returns (path, experts dict, non-expert dict)."""
    cfg = _tiny_cfg(layers, experts)
    H, I = cfg["hidden_size"], cfg["moe_intermediate_size"]
    rng = np.random.default_rng(seed)
    written, ne = {}, {}
    with StreamingWriter(path, cfg, fsync=False) as w:
        ne["embed_tokens.weight"] = quantize(rng.standard_normal((64, H)).astype(np.float32), bits, gs)
        ne["norm.weight"] = (1 + rng.standard_normal(H)).astype(np.float32)                 # not bf16-exact: F32
        ne["layers.0.input_layernorm.weight"] = np.ones(H, np.float32)                         # bf16-exact: BF16
        ne["layers.0.mlp.gate"] = quantize(rng.standard_normal((experts, H)).astype(np.float32), 8, gs)
        ne["layers.0.linear_attn.A_log"] = rng.standard_normal(4).astype(np.float32)
        for k, v in ne.items():
            w.add_non_expert(k, v)
        for layer in range(layers):
            for e in reversed(range(experts)):          # any order
                ws = (quantize(rng.standard_normal((I, H)).astype(np.float32), bits, gs),
                      quantize(rng.standard_normal((I, H)).astype(np.float32), bits, gs),
                      quantize(rng.standard_normal((H, I)).astype(np.float32), bits, gs))
                written[(layer, e)] = ws
                w.add_expert(layer, e, *ws)
        w.finish()
    return path, written, ne


def _same(a: QuantizedWeight, b: QuantizedWeight) -> bool:
    return (a.bits == b.bits and a.group_size == b.group_size and np.array_equal(a.weight, b.weight)
            and np.array_equal(a.scales, b.scales) and np.array_equal(a.biases, b.biases))


def test_roundtrip_alignment_checksums(tmp_path):
    path, written, ne = _build(tmp_path / "m")
    assert is_streaming_layout(path)
    ck = open_streaming(path, verify=True)
    m = json.loads((path / MANIFEST).read_text())
    assert m["format_version"] == 1 and m["config"]["num_experts"] == 4
    for layer, L in enumerate(ck.layout.layers):
        size = os.path.getsize(L.file)
        assert size == L.num_experts * L.stride and L.stride % ALIGN == 0
        raw = L.file.read_bytes()
        for e in range(L.num_experts):
            off = L.offsets[e]
            assert off % ALIGN == 0 and L.sizes[e] <= L.stride
            assert zlib.crc32(raw[off:off + L.sizes[e]]) == L.crcs[e]
            got = ck.expert(layer, e)
            for a, b in zip(got, written[(layer, e)]):
                assert _same(a, b)
    # non-expert weights come back exactly
    for k, v in ne.items():
        got = ck.load(k)
        if isinstance(v, QuantizedWeight):
            assert isinstance(got, QuantizedWeight) and _same(got, v)
            np.testing.assert_array_equal(dequantize(got), dequantize(v))
        else:
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, v)
    assert ck.load("embed_tokens") is not None      # ".weight" suffix optional for linears
    st = m["non_expert"]["tensors"]
    assert st["layers.0.input_layernorm.weight"]["stored_dtype"] == "BF16"
    assert st["norm.weight"]["stored_dtype"] == "F32"
    assert st["layers.0.mlp.gate"]["bits"] == 8
    assert ck.non_expert_names() == list(ne)
    ck.close()


def test_open_checkpoint_dispatches(tmp_path):
    from fmoe.storage.checkpoint import open_checkpoint
    path, _, _ = _build(tmp_path / "m", layers=1, experts=2)
    ck = open_checkpoint(path)
    assert ck.config.num_experts == 2 and ck.config.num_hidden_layers == 1
    assert ck.config.raw["model_type"] == "qwen3_5_moe_text"


def test_existing_destination_refused(tmp_path):
    path, _, _ = _build(tmp_path / "m", layers=1, experts=2)
    with pytest.raises(LayoutError, match="already exists"):
        StreamingWriter(path, _tiny_cfg(1, 2))


def test_overwrite_replaces(tmp_path):
    path, _, _ = _build(tmp_path / "m", layers=1, experts=2)
    cfg = _tiny_cfg(1, 2)
    q = quantize(np.ones((128, 256), np.float32), 4, 64)
    qd = quantize(np.ones((256, 128), np.float32), 4, 64)
    with StreamingWriter(path, cfg, overwrite=True, fsync=False) as w:
        w.add_expert(0, 0, q, q, qd)
        w.add_expert(0, 1, q, q, qd)
        w.finish()
    ck = open_streaming(path)
    assert _same(ck.expert(0, 1)[2], qd) and ck.non_expert_names() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_interrupted_write_leaves_nothing_loadable(tmp_path, monkeypatch):
    dst = tmp_path / "syn"
    calls = {"n": 0}
    orig = StreamingWriter.add_expert

    def boom(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interrupt")
        return orig(self, *a, **k)

    monkeypatch.setattr(StreamingWriter, "add_expert", boom)
    with pytest.raises(KeyboardInterrupt):
        synth_mod.synth(dst, "tiny", layers=2, experts=4, progress=False, fsync=False)
    assert not dst.exists() and not is_streaming_layout(dst)
    assert list(tmp_path.iterdir()) == []           # temporary directory removed
    with pytest.raises(LayoutError):
        open_streaming(dst)


def test_killed_write_temp_dir_not_loadable(tmp_path):
    # a writer that never finishes (process killed): only DST.tmp-* exists, without a manifest
    dst = tmp_path / "m"
    w = StreamingWriter(dst, _tiny_cfg(1, 2), fsync=False)
    w.add_non_expert("norm.weight", np.ones(256, np.float32))
    assert not dst.exists()
    (tmp,) = list(tmp_path.iterdir())
    assert tmp.name.startswith("m.tmp-") and not is_streaming_layout(tmp)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_incomplete_layer_refused(tmp_path):
    cfg = _tiny_cfg(1, 2)
    q = quantize(np.zeros((128, 256), np.float32), 4, 64)
    qd = quantize(np.zeros((256, 128), np.float32), 4, 64)
    with pytest.raises(LayoutError, match="missing"):
        with StreamingWriter(tmp_path / "m", cfg, fsync=False) as w:
            w.add_expert(0, 0, q, q, qd)
            w.finish()
    assert not (tmp_path / "m").exists()


def test_synth_tiny_config_and_shapes(tmp_path):
    from fmoe.storage.config import ModelConfig
    dst = synth_mod.synth(tmp_path / "s", "tiny", layers=4, experts=6, bits=2, progress=False, fsync=False)
    ck = open_streaming(dst, verify=True)
    cfg = ModelConfig.from_file(dst)
    assert cfg.num_experts == 6 and cfg.num_hidden_layers == 4 and cfg.is_full_attention(3)
    g, u, d = ck.expert(3, 5)
    assert g.bits == 2 and g.shape == (128, 256) and d.shape == (256, 128)
    w = dequantize(g)
    assert np.isfinite(w).all() and 0.01 < float(np.abs(w).max()) < 1.0
    names = ck.non_expert_names()
    assert "layers.3.self_attn.q_proj" in names and "layers.0.linear_attn.A_log" in names
    assert ck.load("layers.0.mlp.gate").bits == 8
    ex_b, ne_b = synth_mod.estimate_bytes(ck.config.raw, 2, 64)
    on_disk = sum(f.stat().st_size for f in (dst / "experts").iterdir())
    assert on_disk == ex_b
    assert abs((dst / "non_expert.safetensors").stat().st_size - ne_b) < 64 << 10


def test_synth_397b_dimensions_estimate():
    cfg = synth_mod.make_config("qwen3.5-397b-a17b")
    assert cfg["num_hidden_layers"] == 60 and cfg["num_experts"] == 512 and cfg["num_experts_per_tok"] == 10
    # one 4-bit 397B expert: 7,077,888 bytes of data (ARCHITECTURE.md), region rounded to 4 KiB
    assert synth_mod.expert_region_bytes(cfg, 4, 64) == 7_077_888
    assert synth_mod.expert_region_bytes(cfg, 2, 64) == 3_932_160
    ex_b, ne_b = synth_mod.estimate_bytes(cfg, 4, 64)
    assert 200e9 < ex_b + ne_b < 230e9


def test_free_space_check(tmp_path):
    from fmoe.storage.stream_layout import free_space_check
    with pytest.raises(LayoutError, match="free space"):
        free_space_check(tmp_path / "x", 1 << 60)


def test_expert_read_errors_name_layer_expert_file_and_offset(tmp_path, monkeypatch):
    """StreamingCheckpoint.expert: a missing expert file, a truncated one and an I/O error while reading are each an
    ExpertReadError naming the layer, the expert, the file and the byte offset (before: a bare FileNotFoundError /
    OSError)."""
    import errno

    from fmoe.errors import ExpertReadError

    path, _, _ = _build(tmp_path / "m", layers=2, experts=4)
    ck = open_streaming(path)
    L1 = ck.layout.layers[1]
    os.unlink(L1.file)                                       # deleted
    with pytest.raises(ExpertReadError) as ei:
        ck.expert(1, 2)
    x = ei.value
    assert (x.layer, x.expert, x.file, x.offset) == (1, 2, str(L1.file), L1.offsets[2])
    assert "layer 1" in str(x) and "expert 2" in str(x) and str(L1.file) in str(x)

    L0 = ck.layout.layers[0]
    os.truncate(L0.file, L0.offsets[3] + 1)                  # truncated inside expert 3
    ck.expert(0, 0)
    with pytest.raises(ExpertReadError) as ei:
        ck.expert(0, 3)
    assert (ei.value.layer, ei.value.expert, ei.value.file, ei.value.offset) == (0, 3, str(L0.file), L0.offsets[3])

    def eio(*a):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", eio)
    with pytest.raises(ExpertReadError) as ei:
        ck.expert(0, 1)
    assert (ei.value.layer, ei.value.expert, ei.value.offset) == (0, 1, L0.offsets[1])
    assert "Input/output error" in str(ei.value) and str(L0.file) in str(ei.value)
    monkeypatch.undo()
    ck.close()


def test_expert_reads_from_many_threads_open_one_fd_per_layer(tmp_path, monkeypatch):
    """StreamingCheckpoint.expert is called from convert's thread pool: concurrent first reads of a layer open its
    file once (before: check-then-open raced, and the losing fds leaked)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    path, written, _ = _build(tmp_path / "m", layers=2, experts=4)
    ck = open_streaming(path)
    opened, real_open = [], os.open

    def slow_open(p, *a, **k):
        fd = real_open(p, *a, **k)
        if str(p).endswith(".bin"):
            opened.append(fd)
            time.sleep(0.05)                              # widen the window between the check and the store
        return fd

    monkeypatch.setattr(os, "open", slow_open)
    start = threading.Barrier(8)

    def read(i):
        start.wait()
        return ck.expert(i % 2, i % 4)

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(read, range(8)))
    monkeypatch.undo()
    assert len(opened) == 2 and sorted(ck._fds.values()) == sorted(opened)
    for i, (g, _, _) in enumerate(out):
        assert _same(g, written[(i % 2, i % 4)][0])
    ck.close()
