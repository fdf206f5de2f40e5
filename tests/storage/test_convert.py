"""fmoe convert: HF float and mlx-lm checkpoints -> streaming layout (bit-identical quantization, repack)."""
from __future__ import annotations

import numpy as np
import pytest

from fmoe.cli import convert as cli_convert
from fmoe.storage import convert as convert_mod
from fmoe.storage.checkpoint import open_checkpoint
from fmoe.storage.stream_layout import is_streaming_layout, open_streaming
from fmoe.kernels.quant import QuantizedWeight, dequantize, quantize

tiny_models = pytest.importorskip("tiny_models")



@pytest.fixture(scope="module")
def mlx_dir(tmp_path_factory, hf_dir):
    root = tmp_path_factory.mktemp("mlx")
    tiny_models.to_release_layout(hf_dir, root / "release")
    tiny_models.mlx_convert(root / "release", root / "mlx4", bits=4, group_size=64)
    return root / "mlx4"


def _same(a: QuantizedWeight, b: QuantizedWeight) -> bool:
    return (a.bits, a.group_size) == (b.bits, b.group_size) and all(
        np.array_equal(np.asarray(getattr(a, p)), np.asarray(getattr(b, p))) for p in ("weight", "scales", "biases"))


def test_convert_from_float(hf_dir, tmp_path):
    dst = convert_mod.convert(hf_dir, tmp_path / "s", bits=4, group_size=64, progress=False, fsync=False)
    assert is_streaming_layout(dst) and (dst / "tokenizer.json").is_file()
    src, out = open_checkpoint(hf_dir), open_streaming(dst, verify=True)
    assert out.config.num_experts == src.config.num_experts
    for layer in range(src.config.num_hidden_layers):
        for e in (0, src.config.num_experts - 1):
            for x, q in zip(src.expert(layer, e), out.expert(layer, e)):
                assert _same(q, quantize(np.asarray(x, np.float32), 4, 64))
    # bit-identical to mlx's quantizer on the same input
    mx = pytest.importorskip("mlx.core")
    x = np.asarray(src.expert(0, 1)[0], np.float32)
    wq, sc, bi = mx.quantize(mx.array(x), group_size=64, bits=4)
    q = out.expert(0, 1)[0]
    np.testing.assert_array_equal(np.array(wq).view(np.uint32), q.weight)
    from fmoe.kernels.quant import f32_to_bf16
    np.testing.assert_array_equal(f32_to_bf16(np.array(sc.astype(mx.float32))), q.scales)
    np.testing.assert_array_equal(f32_to_bf16(np.array(bi.astype(mx.float32))), q.biases)
    assert out.load("layers.0.mlp.gate").bits == 8 and out.load("layers.0.mlp.shared_expert_gate").bits == 8
    assert out.load("layers.0.mlp.shared_expert.up_proj").bits == 4
    assert isinstance(out.load("embed_tokens.weight"), QuantizedWeight)
    assert isinstance(out.load("lm_head"), QuantizedWeight)
    for name in src.non_expert_names():
        a = src.load(name)
        if not isinstance(a, QuantizedWeight) and not convert_mod.is_linear_name(name):
            np.testing.assert_array_equal(out.load(name), a)     # norms, conv, A_log, dt_bias: exact
    assert out.config.raw["quantization"]["bits"] == 4


def test_tied_embeddings_convert_and_run(tmp_path):
    """A checkpoint with tie_word_embeddings (no lm_head tensor): the layout stores the embedding once, the model
    uses it as the output layer, and the streamed model's logits follow transformers'."""
    import torch

    from fmoe.engine.model import Model
    hf = tiny_models.build_hf(tmp_path / "hf", "qwen3_5_tied", seed=5)
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    dst = convert_mod.convert(tmp_path / "hf", tmp_path / "s", bits=8, group_size=32, progress=False, fsync=False)
    out = open_streaming(dst, verify=True)
    assert "lm_head" not in out.non_expert_names()
    ids = tiny_models.prompt_ids(24)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float().numpy()
    m = Model.load(dst, backend="torch")
    got = m.ops.to_numpy(m.forward(ids, m.new_cache(), all_logits=True))
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.05
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_convert_from_mlx_repack_and_requantize(mlx_dir, tmp_path):
    src = open_checkpoint(mlx_dir)
    assert isinstance(src.expert(0, 0)[0], QuantizedWeight)
    dst = convert_mod.convert(mlx_dir, tmp_path / "r", progress=False, fsync=False)
    out = open_streaming(dst, verify=True)
    for layer in range(src.config.num_hidden_layers):
        for e in range(src.config.num_experts):
            for a, b in zip(src.expert(layer, e), out.expert(layer, e)):
                assert _same(b, a.numpy())                       # repacked without changing a bit
    for name in src.non_expert_names():
        a, b = src.load(name), out.load(name)
        if isinstance(a, QuantizedWeight):
            assert _same(b, a.numpy())
        else:
            np.testing.assert_array_equal(b, a)
    dst2 = convert_mod.convert(mlx_dir, tmp_path / "r2", bits=2, progress=False, fsync=False)
    out2 = open_streaming(dst2)
    a, b = src.expert(1, 2)[2], out2.expert(1, 2)[2]
    assert b.bits == 2 and _same(b, quantize(dequantize(a), 2, 64))
    assert _same(out2.load("layers.0.self_attn.q_proj" if src.config.is_full_attention(0) else
                           "layers.0.linear_attn.in_proj_qkv"), out.load(
        "layers.0.self_attn.q_proj" if src.config.is_full_attention(0) else "layers.0.linear_attn.in_proj_qkv"))


def test_interrupted_convert_leaves_nothing(hf_dir, tmp_path, monkeypatch):
    n = {"calls": 0}
    real = convert_mod.convert_expert_linear

    def flaky(*a, **k):
        n["calls"] += 1
        if n["calls"] == 7:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(convert_mod, "convert_expert_linear", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_mod.convert(hf_dir, tmp_path / "x", progress=False, fsync=False)
    assert list(tmp_path.iterdir()) == [] and not is_streaming_layout(tmp_path / "x")


def test_convert_main_refuses_existing(hf_dir, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert cli_convert.main([str(hf_dir), str(tmp_path / "x"), "--no-progress"]) == 1
    assert "already exists" in capsys.readouterr().err
