"""Engine core against the references: transformers (HF layouts, fp32) and mlx-lm (its own quantized files)."""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from fmoe.storage.config import ModelConfig
from fmoe.engine.generate import Generation, Sampling
from fmoe.engine.model import Model
from fmoe.errors import BackendError, CheckpointError, ConfigError
from tiny_models import build_hf, mlx_convert, prompt_ids, to_release_layout

BACKENDS = ["torch", "mlx"]


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (checkpoint dir, transformers model)."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for i, shape in enumerate(["qwen3_5_a", "qwen3_5_b", "next", "qwen3_5_tied"]):
        out[shape] = (root / shape, build_hf(root / shape, shape, seed=i))
    to_release_layout(root / "qwen3_5_a", root / "release")
    out["release"] = (root / "release", out["qwen3_5_a"][1])
    return out


@pytest.fixture(scope="module")
def mlx_models(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlx")
    out = {}
    for bits in (4, 2):
        mlx_convert(models["release"][0], root / f"q{bits}", bits)
        out[bits] = root / f"q{bits}"
    return out


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["qwen3_5_a", "qwen3_5_b", "next", "release", "qwen3_5_tied"])
def test_logits_match_transformers(models, name, backend):
    path, ref_model = models[name]
    ids = prompt_ids(32)
    ref = hf_logits(ref_model, ids)
    m = Model.load(path, backend=backend)
    got = m.ops.to_numpy(m.forward(ids, m.new_cache(), all_logits=True))
    assert got.shape == ref.shape
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["qwen3_5_a", "next"])
def test_greedy_generation_matches_transformers(models, name, backend):
    path, ref_model = models[name]
    ids = prompt_ids(12, seed=3)
    with torch.no_grad():
        ref = ref_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, min_new_tokens=32,
                                 pad_token_id=0)[0, len(ids):].tolist()
    m = Model.load(path, backend=backend)
    gen = Generation(m, ids, max_tokens=32, sampling=Sampling(temperature=0.0))
    assert [s.token_id for s in gen] == ref


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_prefill_then_decode_equals_token_by_token(models, backend):
    path, _ = models["qwen3_5_a"]
    ids = prompt_ids(45, seed=5)
    m = Model.load(path, backend=backend)
    step = m.new_cache()
    per_token = [m.ops.to_numpy(m.forward([t], step)) for t in ids]
    chunked = m.new_cache()
    a = m.ops.to_numpy(m.forward(ids[:40], chunked, all_logits=True))   # >= 32 tokens: chunked delta rule on torch
    b = [m.ops.to_numpy(m.forward([t], chunked)) for t in ids[40:]]
    assert rel_err(np.concatenate([a, np.stack(b)]), np.stack(per_token)) <= 1e-4
    g1 = [s.token_id for s in Generation(m, ids, max_tokens=8, prefill_chunk=7)]
    g2 = [s.token_id for s in Generation(m, ids, max_tokens=8, prefill_chunk=64)]
    assert g1 == g2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [4, 2])
def test_mlx_quantized_matches_mlx_lm(mlx_models, bits, backend):
    import mlx.core as mx
    from mlx_lm import load

    path = mlx_models[bits]
    ref_model, _ = load(str(path))
    ids = prompt_ids(32, seed=1)
    ref = np.array(ref_model(mx.array([ids]))[0].astype(mx.float32))
    m = Model.load(path, backend=backend)
    assert m.checkpoint.layout == "mlx"
    router = m.checkpoint.load("layers.0.mlp.gate")
    assert router.bits == 8 and m.checkpoint.load("layers.0.mlp.shared_expert.up_proj").bits == bits
    got = m.ops.to_numpy(m.forward(ids, m.new_cache(), all_logits=True))
    assert rel_err(got, ref) <= 1e-3


def test_bf16_fast_path_close_to_fp32(mlx_models):
    """The generation path (bf16 compute with the fast kernels) stays within 1e-2 and keeps greedy tokens."""
    ids = prompt_ids(24, seed=2)
    f32 = Model.load(mlx_models[4], backend="torch", dtype="float32")
    bf = Model.load(mlx_models[4], backend="torch", dtype="bfloat16")
    a = f32.ops.to_numpy(f32.forward(ids, f32.new_cache(), all_logits=True))
    b = bf.ops.to_numpy(bf.forward(ids, bf.new_cache(), all_logits=True))
    assert rel_err(b, a) <= 1e-2
    ga = [s.token_id for s in Generation(f32, ids, max_tokens=16)]
    gb = [s.token_id for s in Generation(bf, ids, max_tokens=16)]
    assert ga == gb


def test_experts_per_token_is_a_runtime_setting(models):
    path, ref_model = models["qwen3_5_a"]
    ids = prompt_ids(16)
    m = Model.load(path, experts_per_token=1)
    one = m.ops.to_numpy(m.forward(ids, m.new_cache(), all_logits=True))
    m.set_experts_per_token(2)
    two = m.ops.to_numpy(m.forward(ids, m.new_cache(), all_logits=True))
    assert rel_err(two, hf_logits(ref_model, ids)) <= 1e-4
    assert rel_err(one, two) > 1e-3
    with pytest.raises(ConfigError, match="experts per token"):
        m.set_experts_per_token(99)


# ------------------------------------------------------------------------------------------------ bad input
def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="llama.*qwen3_5_moe.*qwen3_next"):
        ModelConfig.from_file(tmp_path)


def test_missing_config_field_is_named(models):
    cfg = json.loads((models["qwen3_5_a"][0] / "config.json").read_text())
    del cfg["num_experts"]
    with pytest.raises(ConfigError, match="num_experts"):
        ModelConfig.from_dict(cfg)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite(path, fn):
    from safetensors.numpy import load_file, save_file
    sd = load_file(str(path / "model.safetensors"))
    fn(sd)
    save_file(sd, str(path / "model.safetensors"))


def test_missing_tensor_is_named(models, tmp_path):
    d = _copy(models["qwen3_5_a"][0], tmp_path / "m")
    _rewrite(d, lambda sd: sd.pop("model.layers.2.linear_attn.in_proj_qkv.weight"))
    with pytest.raises(CheckpointError, match="layers.2.linear_attn.in_proj_qkv"):
        Model.load(d)


def test_missing_expert_is_named(models, tmp_path):
    d = _copy(models["qwen3_5_a"][0], tmp_path / "m")
    _rewrite(d, lambda sd: [sd.pop(k) for k in list(sd) if ".layers.1.mlp.experts.5." in k])
    m = Model.load(d)
    with pytest.raises(CheckpointError, match="expert 5 in layer 1"):
        for layer in range(4):
            m.checkpoint.expert(layer, 5)


def test_wrong_shape_is_named(models, tmp_path):
    d = _copy(models["qwen3_5_a"][0], tmp_path / "m")
    _rewrite(d, lambda sd: sd.__setitem__("model.layers.3.self_attn.k_proj.weight", np.zeros((5, 64), np.float32)))
    with pytest.raises(CheckpointError, match=r"layers.3.self_attn.k_proj.*shape \[5, 64\]"):
        Model.load(d)


def test_truncated_shard_is_named(models, tmp_path):
    d = _copy(models["qwen3_5_a"][0], tmp_path / "m")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        Model.load(d)
    f.write_bytes(data[:4])
    with pytest.raises(CheckpointError, match="truncated"):
        Model.load(d)
    f.write_bytes(struct.pack("<Q", 10**9) + data[8:100])
    with pytest.raises(CheckpointError, match="truncated"):
        Model.load(d)


def test_wrong_backend(models):
    with pytest.raises(BackendError, match="unknown backend 'jax'.*torch, mlx"):
        Model.load(models["qwen3_5_a"][0], backend="jax")


def test_cli_generate_json_and_bad_backend(models, capsys):
    from fmoe.cli import main

    path = str(models["qwen3_5_a"][0])
    assert main(["generate", "--model", path, "--prompt", "hello world", "--max-tokens", "5", "--json",
                 "--ignore-eos"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("text", "token_ids", "prompt_tokens", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes"):
        assert key in out
    assert len(out["token_ids"]) == 5 and out["prompt_tokens"] > 0
    assert main(["generate", "--model", path, "--prompt", "hi", "--backend", "tpu"]) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err


def test_sampling_min_p_top_k_top_p():
    """min_p / top_k / top_p only ever return tokens inside their cut; a seed makes the draw repeatable."""
    import numpy as np

    from fmoe.engine.generate import Sampling, sample
    from fmoe.errors import FmoeError

    logits = np.log(np.array([0.5, 0.25, 0.15, 0.06, 0.04]))
    draws = lambda s, n=400: {sample(logits, s, rng) for rng in [np.random.default_rng(0)] for _ in range(n)}  # noqa: E731
    assert draws(Sampling(temperature=1.0, min_p=0.2)) == {0, 1, 2}      # p >= 0.2 * 0.5
    assert draws(Sampling(temperature=1.0, min_p=0.6)) == {0}
    assert draws(Sampling(temperature=1.0, top_k=2)) == {0, 1}
    assert draws(Sampling(temperature=1.0, top_p=0.7)) == {0, 1}
    assert draws(Sampling(temperature=1.0)) == {0, 1, 2, 3, 4}
    a = [sample(logits, Sampling(temperature=1.0), np.random.default_rng(7)) for _ in range(20)]
    b = [sample(logits, Sampling(temperature=1.0), np.random.default_rng(7)) for _ in range(20)]
    assert a == b
    with pytest.raises(FmoeError):
        Sampling(min_p=1.5)


@pytest.mark.parametrize("name", ["qwen3_5_a", "qwen3_5_b", "next"])
def test_cpu_decode_fast_paths(models, name):
    """Torch CPU float32 decode against the layer's torch ops (GatedDeltaNet.mix) and the composite norm: the
    backend's ~25-op Gated DeltaNet step (``fused_deltanet`` off) and its one-op torch RMSNorm (``native_norm`` off)
    give the same bits, logits and recurrent states alike; the one-call native step and the native RMSNorm (the
    defaults; float32 approximations of exp and SiLU, the sum of squares in another order) are within 1e-5 of their
    scale."""
    path, _ = models[name]
    ids = prompt_ids(6, seed=7)
    runs = []
    for mode in ("native", "ops", "plain"):
        m = Model.load(path, backend="torch", dtype="float32")
        if mode == "ops":
            m.ops.fused_deltanet = False
            m.ops.native_norm = False
        if mode == "plain":
            m.ops.gated_delta_step = None
            m.ops.rms_norm = _composite_rms_norm
        cache = m.new_cache()
        logits = [m.forward([t], cache) for t in ids]
        took = [getattr(layer.mixer, "_gdn_params" if mode == "native" else "_conv_taps", None) is not None
                for layer in m.layers if not layer.is_attention]
        runs.append((logits, [s.recurrent for s in cache.layers if hasattr(s, "recurrent")], took))
    (ln, sn, used_n), (lo, so, used_o), (lp, sp, _) = runs
    assert used_n and all(used_n) and all(used_o)     # each fast run took its step
    assert all(torch.equal(a, b) for a, b in zip(lo, lp))
    assert all(torch.equal(a, b) for a, b in zip(so, sp))
    assert max(rel_err(a, b) for a, b in zip(ln, lp)) <= 1e-5
    assert max(rel_err(a, b) for a, b in zip(sn, sp)) <= 1e-5


def _composite_rms_norm(x, w, eps):
    xf = x.float()
    return ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)) * w.float()).to(x.dtype)
