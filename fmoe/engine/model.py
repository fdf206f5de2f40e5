"""The Qwen3.5-MoE / Qwen3-Next decoder: embeddings, layers (Gated DeltaNet or gated attention, then sparse MoE),
final norm and lm_head, written once against the backend interface (fmoe/engine/backends/).

    model = Model.load("path/to/checkpoint", backend="torch")
    cache = model.new_cache()
    logits = model.forward([1, 2, 3], cache)        # logits of the last token, backend-native [vocab]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fmoe.engine.attention import GatedAttention, RoPE
from fmoe.engine.backends import get_backend
from fmoe.engine.cache import ModelCache
from fmoe.storage.checkpoint import open_checkpoint
from fmoe.storage.config import ModelConfig
from fmoe.engine.gated_deltanet import GatedDeltaNet
from fmoe.engine.moe import InMemoryExperts, MoEStats, SparseMoE, StreamedExperts
from fmoe.engine.stats import EngineStats
from fmoe.errors import ConfigError, FmoeError


class ContextLengthError(FmoeError, ValueError):
    """A prompt (with what the cache holds) longer than the model's ``max_position_embeddings``."""


class DecoderLayer:
    def __init__(self, ops, cfg: ModelConfig, i: int, checkpoint, experts, stats: MoEStats):
        self.ops, self.cfg, self.i = ops, cfg, i
        p = f"layers.{i}"

        def linear(name: str):      # a projection, prepared for the backend (quantized weights stay quantized)
            return ops.prepare_linear(checkpoint.load(name))

        def vector(name: str):      # a norm weight or other 1-D parameter, float32
            return ops.asarray(np.asarray(checkpoint.load(name), dtype=np.float32), "float32")

        self.in_norm = vector(f"{p}.input_layernorm.weight")
        self.post_norm = vector(f"{p}.post_attention_layernorm.weight")
        self.is_attention = cfg.is_full_attention(i)
        if self.is_attention:
            a = f"{p}.self_attn"
            weights = {n: linear(f"{a}.{n}") for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
            weights["q_norm"], weights["k_norm"] = vector(f"{a}.q_norm.weight"), vector(f"{a}.k_norm.weight")
            self.mixer = GatedAttention(ops, cfg, weights)
        else:
            a = f"{p}.linear_attn"
            weights = {n: linear(f"{a}.{n}")
                       for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")}
            weights["conv1d"] = ops.asarray(np.asarray(checkpoint.load(f"{a}.conv1d.weight"), dtype=np.float32))
            weights["A_log"], weights["dt_bias"] = vector(f"{a}.A_log"), vector(f"{a}.dt_bias")
            weights["norm"] = vector(f"{a}.norm.weight")
            self.mixer = GatedDeltaNet(ops, cfg, weights)
        m = f"{p}.mlp"
        moe_weights = {"gate": linear(f"{m}.gate"), "shared_expert_gate": linear(f"{m}.shared_expert_gate")}
        for n in ("gate_proj", "up_proj", "down_proj"):
            moe_weights[f"shared_{n}"] = linear(f"{m}.shared_expert.{n}")
        self.moe = SparseMoE(ops, cfg, i, moe_weights, experts, stats)
        self.predict = False

    def __call__(self, x, state, rope, cos, sin, offset: int):
        ops, eps = self.ops, self.cfg.rms_norm_eps
        if self.predict:   # start reading this layer's likely experts before attention runs
            self.moe.predict(ops.rms_norm(x, self.post_norm, eps))
        h = ops.rms_norm(x, self.in_norm, eps)
        if self.is_attention:
            h = self.mixer(h, state, rope, cos, sin, offset)
        else:
            h = self.mixer(h, state)
        x = x + h
        return x + self.moe(ops.rms_norm(x, self.post_norm, eps))


def _device_budget(ops, budget: int | None) -> int:
    """VRAM for experts on a CUDA backend: ``budget`` if given, else 60% of the free device memory at load (the rest
    for the non-expert weights, KV cache and activations); 0 (no device tier) on other devices."""
    device = getattr(ops, "device", None)
    if getattr(device, "type", None) != "cuda":
        if budget:
            raise ConfigError("--gpu-memory-budget needs --device cuda")
        return 0
    if budget is not None:
        return int(budget)
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free * 0.6)


class Model:
    def __init__(self, checkpoint, backend: str = "torch", dtype: str = "float32", device: str | None = None,
                 experts_per_token: int | None = None, expert_source=None, predict_experts: bool = False,
                 gpu_memory_budget: int | None = None):
        self.checkpoint = checkpoint
        self.cfg: ModelConfig = checkpoint.config
        self.ops = get_backend(backend, dtype, device)
        ops, cfg = self.ops, self.cfg
        self.moe_stats = MoEStats()
        if expert_source is None:
            self.experts = InMemoryExperts(ops, checkpoint)
        else:
            self.experts = StreamedExperts(ops, expert_source, _device_budget(ops, gpu_memory_budget))
        emb = checkpoint.load("embed_tokens.weight")
        self.embed = ops.prepare_embedding(emb)
        self.norm = ops.asarray(checkpoint.load("norm.weight"), "float32")
        # tied embeddings (no lm_head tensor in the checkpoint): the output layer is the embedding, read once
        self.lm_head = ops.prepare_linear(emb if cfg.tie_word_embeddings else checkpoint.load("lm_head"))
        del emb
        self.layers = [DecoderLayer(ops, cfg, i, checkpoint, self.experts, self.moe_stats)
                       for i in range(cfg.num_hidden_layers)]
        self.rope = RoPE(ops, cfg)
        self.set_experts_per_token(cfg.num_experts_per_tok if experts_per_token is None else experts_per_token)
        self.set_prediction(predict_experts)
        self.compute_s = 0.0

    @classmethod
    def load(cls, path: str | Path, backend: str = "torch", dtype: str = "float32", device: str | None = None,
             experts_per_token: int | None = None, stream: dict | None = None, predict_experts: bool | None = None,
             gpu_memory_budget: int | None = None):
        """Open a checkpoint directory. ``stream`` (streaming layout only) holds ExpertStore options:
        ``mode`` ('page-cache' | 'direct'), ``memory_budget`` (bytes), ``verify``, ``io_threads``.
        ``gpu_memory_budget`` (CUDA, streaming layout): bytes of experts kept in VRAM (default: see _device_budget)."""
        checkpoint = open_checkpoint(path)
        source = None
        if hasattr(checkpoint, "expert_source"):
            source = checkpoint.expert_source(**(stream or {}))
            if predict_experts is None:
                predict_experts = True
        elif stream:
            raise ConfigError(f"{path}: streaming options need the streaming layout (run `fmoe convert` first)")
        return cls(checkpoint, backend, dtype, device, experts_per_token, source, bool(predict_experts),
                   gpu_memory_budget)

    def set_experts_per_token(self, k: int) -> None:
        if not 1 <= k <= self.cfg.num_experts:
            raise ConfigError(f"experts per token must be in 1..{self.cfg.num_experts}, got {k}")
        self.experts_per_token = k
        for layer in self.layers:
            layer.moe.top_k = k

    def set_prediction(self, on: bool) -> None:
        self.predict_experts = on
        for layer in self.layers:
            layer.predict = on

    def new_cache(self) -> ModelCache:
        return ModelCache.empty(self.cfg.layer_types)

    def forward(self, ids: Sequence[int], cache: ModelCache, all_logits: bool = False):
        """Feed ``ids`` (a prompt chunk or one token) after what ``cache`` holds; return the last token's logits
        ([vocab], float32) or, with ``all_logits``, every position's ([T, vocab])."""
        ids = list(ids)
        if getattr(self, "_closed", False):
            raise FmoeError("the model is closed")
        limit = self.cfg.max_position_embeddings
        if limit and cache.offset + len(ids) > limit:
            raise ContextLengthError(
                f"{cache.offset + len(ids)} tokens ({cache.offset} in the cache + {len(ids)} new) exceed the model's "
                f"context of {limit} tokens (max_position_embeddings): shorten the prompt")
        with self.ops.step_context(len(ids)):
            return self._forward(ids, cache, all_logits)

    def _forward(self, ids: list[int], cache: ModelCache, all_logits: bool):
        t0 = time.perf_counter()
        ops = self.ops
        T, offset = len(ids), cache.offset
        x = ops.embedding(self.embed, ids)
        cos, sin = self.rope.tables(offset, T)
        for layer, state in zip(self.layers, cache.layers):
            x = layer(x, state, self.rope, cos, sin, offset)
        if not all_logits:
            x = x[T - 1:]
        x = ops.rms_norm(x, self.norm, self.cfg.rms_norm_eps)
        logits = ops.astype(ops.linear(x, self.lm_head), "float32")
        cache.tokens.extend(ids)
        ops.sync()
        self.compute_s += time.perf_counter() - t0
        return logits if all_logits else logits[0]

    def stats(self) -> EngineStats:
        """What the engine has done since load (cumulative): fmoe.engine.stats.EngineStats."""
        return EngineStats.collect(self.experts.stats(), self.moe_stats.merge(), self.experts_per_token)

    def stats_since(self, mark: EngineStats) -> EngineStats:
        """What the engine has done since ``mark`` (an earlier ``stats()``): a per-step or per-task window."""
        return self.stats().since(mark)

    def close(self) -> None:
        """Release what the model holds open: the expert store (its I/O threads and file descriptors) and the
        checkpoint's files.  Idempotent; the model cannot run afterwards."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        close = getattr(self.experts, "close", None)
        if close is not None:
            close()
        close = getattr(self.checkpoint, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
