"""The Qwen3.5-MoE / Qwen3-Next decoder: embeddings, layers (Gated DeltaNet or gated attention, then sparse MoE),
final norm and lm_head, written once against the backend interface (fmoe/engine/backend.py).

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
from fmoe.engine.backend import get_backend
from fmoe.engine.cache import ModelCache
from fmoe.engine.checkpoint import open_checkpoint
from fmoe.engine.config import ModelConfig
from fmoe.engine.gated_deltanet import GatedDeltaNet
from fmoe.engine.moe import InMemoryExperts, MoEStats, SparseMoE, StreamedExperts
from fmoe.errors import ConfigError


class DecoderLayer:
    def __init__(self, B, cfg: ModelConfig, i: int, ck, experts, stats: MoEStats):
        self.B, self.cfg, self.i = B, cfg, i
        p = f"layers.{i}"
        lin = lambda n: B.prepare_linear(ck.load(n))
        vec = lambda n: B.asarray(np.asarray(ck.load(n), dtype=np.float32), "float32")
        self.in_norm = vec(f"{p}.input_layernorm.weight")
        self.post_norm = vec(f"{p}.post_attention_layernorm.weight")
        self.is_attention = cfg.is_full_attention(i)
        if self.is_attention:
            a = f"{p}.self_attn"
            w = {n: lin(f"{a}.{n}") for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
            w["q_norm"], w["k_norm"] = vec(f"{a}.q_norm.weight"), vec(f"{a}.k_norm.weight")
            self.mixer = GatedAttention(B, cfg, w)
        else:
            a = f"{p}.linear_attn"
            w = {n: lin(f"{a}.{n}") for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")}
            w["conv1d"] = B.asarray(np.asarray(ck.load(f"{a}.conv1d.weight"), dtype=np.float32))
            w["A_log"], w["dt_bias"], w["norm"] = vec(f"{a}.A_log"), vec(f"{a}.dt_bias"), vec(f"{a}.norm.weight")
            self.mixer = GatedDeltaNet(B, cfg, w)
        m = f"{p}.mlp"
        mw = {"gate": lin(f"{m}.gate"), "shared_expert_gate": lin(f"{m}.shared_expert_gate")}
        for n in ("gate_proj", "up_proj", "down_proj"):
            mw[f"shared_{n}"] = lin(f"{m}.shared_expert.{n}")
        self.moe = SparseMoE(B, cfg, i, mw, experts, stats)
        self.predict = False

    def __call__(self, x, state, rope, cos, sin, offset: int):
        B, eps = self.B, self.cfg.rms_norm_eps
        if self.predict:   # start reading this layer's likely experts before attention runs
            self.moe.predict(B.rms_norm(x, self.post_norm, eps))
        h = B.rms_norm(x, self.in_norm, eps)
        if self.is_attention:
            h = self.mixer(h, state, rope, cos, sin, offset)
        else:
            h = self.mixer(h, state)
        x = x + h
        return x + self.moe(B.rms_norm(x, self.post_norm, eps))


class Model:
    def __init__(self, ck, backend: str = "torch", dtype: str = "float32", device: str | None = None,
                 experts_per_token: int | None = None, expert_source=None, predict_experts: bool = False):
        self.ck = ck
        self.cfg: ModelConfig = ck.config
        self.B = get_backend(backend, dtype, device)
        B, cfg = self.B, self.cfg
        self.moe_stats = MoEStats()
        if expert_source is None:
            self.experts = InMemoryExperts(B, ck)
        else:
            self.experts = StreamedExperts(B, expert_source)
        emb = ck.load("embed_tokens.weight")
        self.embed = B.prepare_embedding(emb)
        self.norm = B.asarray(ck.load("norm.weight"), "float32")
        # tied embeddings (no lm_head tensor in the checkpoint): the output layer is the embedding, read once
        self.lm_head = B.prepare_linear(emb if cfg.tie_word_embeddings else ck.load("lm_head"))
        del emb
        self.layers = [DecoderLayer(B, cfg, i, ck, self.experts, self.moe_stats) for i in range(cfg.num_hidden_layers)]
        self.rope = RoPE(B, cfg)
        self.set_experts_per_token(experts_per_token or cfg.num_experts_per_tok)
        self.set_prediction(predict_experts)
        self.compute_s = 0.0

    @classmethod
    def load(cls, path: str | Path, backend: str = "torch", dtype: str = "float32", device: str | None = None,
             experts_per_token: int | None = None, stream: dict | None = None, predict_experts: bool | None = None):
        """Open a checkpoint directory. ``stream`` (streaming layout only) holds ExpertStore options:
        ``mode`` ('page-cache' | 'direct'), ``memory_budget`` (bytes), ``verify``, ``io_threads``."""
        ck = open_checkpoint(path)
        source = None
        if hasattr(ck, "expert_source"):
            source = ck.expert_source(**(stream or {}))
            if predict_experts is None:
                predict_experts = True
        elif stream:
            raise ConfigError(f"{path}: streaming options need the streaming layout (run `fmoe convert` first)")
        return cls(ck, backend, dtype, device, experts_per_token, source, bool(predict_experts))

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
        with self.B.step_context(len(ids)):
            return self._forward(ids, cache, all_logits)

    def _forward(self, ids: list[int], cache: ModelCache, all_logits: bool):
        t0 = time.perf_counter()
        B = self.B
        T, offset = len(ids), cache.offset
        x = B.embedding(self.embed, ids)
        cos, sin = self.rope.tables(offset, T)
        for layer, state in zip(self.layers, cache.layers):
            x = layer(x, state, self.rope, cos, sin, offset)
        if not all_logits:
            x = x[T - 1:]
        x = B.rms_norm(x, self.norm, self.cfg.rms_norm_eps)
        logits = B.astype(B.linear(x, self.lm_head), "float32")
        cache.tokens.extend(ids)
        B.sync()
        self.compute_s += time.perf_counter() - t0
        return logits if all_logits else logits[0]

    def stats(self) -> dict:
        s = dict(self.experts.stats())
        s.update(self.moe_stats.merge())
        s["experts_per_token"] = self.experts_per_token
        return s
