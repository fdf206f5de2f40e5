"""``fmoe synth``: a random-weight model in the streaming layout at a real model's dimensions.

For benchmarks, and for users checking their machine before a 200 GB download.  Packed weights are random uint32
words taken from a random pool (no float quantization: a 32 GB model is written at disk speed); scales and biases
are chosen so the dequantized weights are uniform in ``[-a, a]`` with ``a = sqrt(3 / in_features)`` (unit-variance
outputs for unit-variance inputs), bf16 with a little jitter.

    fmoe synth DST --like qwen3.5-397b-a17b [--layers N] [--experts E] [--top-k K] [--bits B] [--group-size G]
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmoe.storage.progress import byte_progress
from fmoe.storage.stream_layout import (ALIGN, ARRAY_ALIGN, StreamingWriter, _round_up, free_space_check)
from fmoe.errors import FmoeError
from fmoe.kernels.quant import QuantizedWeight, f32_to_bf16

# text-model dimensions (see /work/shared/reference/qwen3_5/ARCHITECTURE.md)
PRESETS: dict[str, dict] = {
    "qwen3.5-397b-a17b": dict(hidden_size=4096, num_hidden_layers=60, num_attention_heads=32, num_key_value_heads=2,
                              head_dim=256, linear_num_key_heads=16, linear_num_value_heads=64, num_experts=512,
                              num_experts_per_tok=10, moe_intermediate_size=1024,
                              shared_expert_intermediate_size=1024, vocab_size=248320),
    "qwen3.5-122b-a10b": dict(hidden_size=3072, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=2,
                              head_dim=256, linear_num_key_heads=16, linear_num_value_heads=64, num_experts=256,
                              num_experts_per_tok=8, moe_intermediate_size=1024,
                              shared_expert_intermediate_size=1024, vocab_size=248320),
    "qwen3.5-35b-a3b": dict(hidden_size=2048, num_hidden_layers=40, num_attention_heads=16, num_key_value_heads=2,
                            head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32, num_experts=256,
                            num_experts_per_tok=8, moe_intermediate_size=512,
                            shared_expert_intermediate_size=512, vocab_size=248320),
    # a few-MB model for tests
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
                 num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
                 shared_expert_intermediate_size=128, vocab_size=1024),
}
ALIASES = {"397b": "qwen3.5-397b-a17b", "122b": "qwen3.5-122b-a10b", "35b": "qwen3.5-35b-a3b"}


def make_config(like: str, layers: int | None = None, experts: int | None = None, top_k: int | None = None,
                bits: int = 4, group_size: int = 64) -> dict:
    """A ``qwen3_5_moe_text`` config.json dict at ``like``'s dimensions (fewer layers/experts when asked)."""
    like = ALIASES.get(like.lower(), like.lower())
    if like not in PRESETS:
        raise FmoeError(f"unknown model {like!r}; known: {', '.join(PRESETS)}")
    p = dict(linear_key_head_dim=128, linear_value_head_dim=128)
    p.update(PRESETS[like])
    n_layers = int(layers or p["num_hidden_layers"])
    n_exp = int(experts or p["num_experts"])
    k = int(top_k or min(p["num_experts_per_tok"], n_exp))
    if not 0 < k <= n_exp:
        raise FmoeError(f"top-k {k} must be in 1..{n_exp}")
    cfg = {
        "model_type": "qwen3_5_moe_text",
        "architectures": ["Qwen3_5MoeForCausalLM"],
        **p,
        "num_hidden_layers": n_layers,
        "num_experts": n_exp,
        "num_experts_per_tok": k,
        "linear_conv_kernel_dim": 4,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "full_attention_interval": 4,
        "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n_layers)],
        "max_position_embeddings": 262144,
        "tie_word_embeddings": False,
        "norm_topk_prob": True,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "eos_token_id": 248046 if p["vocab_size"] > 248046 else p["vocab_size"] - 1,
        "quantization": {"group_size": group_size, "bits": bits, "mode": "affine"},
        "fmoe_synthetic": {"like": like, "random_weights": True},
    }
    return cfg


@dataclass
class TensorPlan:
    name: str
    kind: str                 # "q" quantized linear, "norm", "conv", "dt_bias", "A_log"
    shape: tuple[int, int] | tuple[int, ...]
    bits: int = 0


def plan_non_expert(cfg: dict, bits: int) -> list[TensorPlan]:
    """Canonical non-expert tensors (the names ``fmoe.storage.checkpoint.Checkpoint.non_expert_names`` lists)."""
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    hd, Hq, Hkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    Hk, Hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    kd, vd = Hk * dk, Hv * dv
    S, E = cfg["shared_expert_intermediate_size"], cfg["num_experts"]
    out = [TensorPlan("embed_tokens.weight", "q", (V, H), bits), TensorPlan("norm.weight", "norm", (H,)),
           TensorPlan("lm_head", "q", (V, H), bits)]
    for i, lt in enumerate(cfg["layer_types"]):
        p = f"layers.{i}"
        out += [TensorPlan(f"{p}.input_layernorm.weight", "norm", (H,)),
                TensorPlan(f"{p}.post_attention_layernorm.weight", "norm", (H,))]
        if lt == "full_attention":
            a = f"{p}.self_attn"
            out += [TensorPlan(f"{a}.q_proj", "q", (2 * Hq * hd, H), bits),
                    TensorPlan(f"{a}.k_proj", "q", (Hkv * hd, H), bits),
                    TensorPlan(f"{a}.v_proj", "q", (Hkv * hd, H), bits),
                    TensorPlan(f"{a}.o_proj", "q", (H, Hq * hd), bits),
                    TensorPlan(f"{a}.q_norm.weight", "norm", (hd,)), TensorPlan(f"{a}.k_norm.weight", "norm", (hd,))]
        else:
            a = f"{p}.linear_attn"
            out += [TensorPlan(f"{a}.in_proj_qkv", "q", (2 * kd + vd, H), bits),
                    TensorPlan(f"{a}.in_proj_z", "q", (vd, H), bits),
                    TensorPlan(f"{a}.in_proj_b", "q", (Hv, H), bits),
                    TensorPlan(f"{a}.in_proj_a", "q", (Hv, H), bits),
                    TensorPlan(f"{a}.out_proj", "q", (H, vd), bits),
                    TensorPlan(f"{a}.conv1d.weight", "conv", (2 * kd + vd, cfg["linear_conv_kernel_dim"])),
                    TensorPlan(f"{a}.dt_bias", "dt_bias", (Hv,)), TensorPlan(f"{a}.A_log", "A_log", (Hv,)),
                    TensorPlan(f"{a}.norm.weight", "norm", (dv,))]
        m = f"{p}.mlp"
        out += [TensorPlan(f"{m}.gate", "q", (E, H), 8), TensorPlan(f"{m}.shared_expert_gate", "q", (1, H), 8),
                TensorPlan(f"{m}.shared_expert.gate_proj", "q", (S, H), bits),
                TensorPlan(f"{m}.shared_expert.up_proj", "q", (S, H), bits),
                TensorPlan(f"{m}.shared_expert.down_proj", "q", (H, S), bits)]
    return out


def _q_nbytes(out_f: int, in_f: int, bits: int, gs: int) -> int:
    return out_f * in_f * bits // 8 + 2 * 2 * out_f * (in_f // gs)


def expert_region_bytes(cfg: dict, bits: int, gs: int) -> int:
    H, I = cfg["hidden_size"], cfg["moe_intermediate_size"]
    off = 0
    for o, i in ((I, H), (I, H), (H, I)):
        for n in (o * i * bits // 8, 2 * o * (i // gs), 2 * o * (i // gs)):
            off = _round_up(off + n, ARRAY_ALIGN)
    return _round_up(off, ALIGN)


def estimate_bytes(cfg: dict, bits: int, gs: int) -> tuple[int, int]:
    """(expert bytes, non-expert bytes) the layout will take on disk."""
    ex = expert_region_bytes(cfg, bits, gs) * cfg["num_experts"] * cfg["num_hidden_layers"]
    ne = 0
    for t in plan_non_expert(cfg, bits):
        ne += _q_nbytes(t.shape[0], t.shape[1], t.bits, gs) if t.kind == "q" else 2 * int(np.prod(t.shape))
    return ex, ne


class RandomQuant:
    """Random QuantizedWeights from a pool of random words (fast: no float quantization)."""

    def __init__(self, seed: int = 0, pool_words: int = 1 << 24):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.integers(0, 1 << 32, size=pool_words, dtype=np.uint32)
        self._jitter = self.rng.uniform(0.9, 1.1, size=1 << 16).astype(np.float32)

    def words(self, n: int) -> np.ndarray:
        if n <= self.pool.size:
            start = int(self.rng.integers(0, self.pool.size - n + 1))
            return self.pool[start:start + n]
        return np.resize(self.pool[int(self.rng.integers(0, self.pool.size)):], n)

    def qw(self, out_f: int, in_f: int, bits: int, gs: int) -> QuantizedWeight:
        w = self.words(out_f * in_f * bits // 32).reshape(out_f, in_f * bits // 32)
        ng = in_f // gs
        a = math.sqrt(3.0 / in_f)
        n = out_f * ng
        start = int(self.rng.integers(0, self._jitter.size))
        jit = np.resize(np.roll(self._jitter, -start), n).reshape(out_f, ng)
        scale = jit * np.float32(2 * a / ((1 << bits) - 1))
        bias = -jit * np.float32(a)
        return QuantizedWeight(w, f32_to_bf16(scale), f32_to_bf16(bias), bits, gs)


def _dense(t: TensorPlan, rng: np.random.Generator) -> np.ndarray:
    if t.kind == "norm":
        return (1.0 + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)
    if t.kind == "conv":
        return (rng.standard_normal(t.shape) * 0.3).astype(np.float32)
    if t.kind == "dt_bias":
        return np.ones(t.shape, np.float32)
    if t.kind == "A_log":
        return np.log(rng.uniform(1.0, 16.0, t.shape)).astype(np.float32)
    raise ValueError(t.kind)


def synth(dst: str | Path, like: str = "qwen3.5-397b-a17b", layers: int | None = None, experts: int | None = None,
          bits: int = 4, group_size: int = 64, top_k: int | None = None, seed: int = 0, overwrite: bool = False,
          progress: bool = True, fsync: bool = True, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a random-weight streaming layout at ``dst``; returns its path."""
    from fmoe.kernels.quant import check_bits_group
    check_bits_group(bits, group_size)
    cfg = make_config(like, layers, experts, top_k, bits, group_size)
    ex_b, ne_b = estimate_bytes(cfg, bits, group_size)
    free_space_check(dst, ex_b + ne_b)
    rq = RandomQuant(seed)
    rng = np.random.default_rng(seed + 1)
    plan = plan_non_expert(cfg, bits)
    L, E = cfg["num_hidden_layers"], cfg["num_experts"]
    H, I = cfg["hidden_size"], cfg["moe_intermediate_size"]
    t0 = time.perf_counter()
    with byte_progress(progress) as prog, \
            StreamingWriter(dst, cfg, overwrite=overwrite, fsync=fsync, tokenizer_dir=tokenizer_dir,
                            metadata={"created_by": "fmoe synth", "like": cfg["fmoe_synthetic"]["like"]}) as w:
        task = prog.add_task(f"synth {Path(dst).name}", total=ex_b + ne_b) if prog else None
        for t in plan:
            if t.kind == "q":
                w.add_non_expert(t.name, rq.qw(t.shape[0], t.shape[1], t.bits, group_size))
                n = _q_nbytes(t.shape[0], t.shape[1], t.bits, group_size)
            else:
                w.add_non_expert(t.name, _dense(t, rng))
                n = 2 * int(np.prod(t.shape))
            if prog:
                prog.update(task, advance=n)
        stride = expert_region_bytes(cfg, bits, group_size)
        for layer in range(L):
            for e in range(E):
                w.add_expert(layer, e, rq.qw(I, H, bits, group_size), rq.qw(I, H, bits, group_size),
                             rq.qw(H, I, bits, group_size))
                if prog:
                    prog.update(task, advance=stride)
        out = w.finish()
    if progress:
        dt = time.perf_counter() - t0
        print(f"wrote {out}: {L} layers x {E} experts, {bits}-bit, {(ex_b + ne_b) / 1e9:.2f} GB in {dt:.1f} s "
              f"({(ex_b + ne_b) / 1e9 / max(dt, 1e-9):.2f} GB/s)", file=sys.stderr)
    return out
