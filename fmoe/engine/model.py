"""The Qwen3.5-MoE / Qwen3-Next decoder: embeddings, layers (Gated DeltaNet or gated attention, then sparse MoE),
final norm and lm_head, written once against the backend interface (fmoe/engine/backends/).

    model = Model.load("path/to/checkpoint", backend="torch")
    cache = model.new_cache()
    logits = model.forward([1, 2, 3], cache)        # logits of the last token, backend-native [vocab]
"""
from __future__ import annotations

import os
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
from fmoe.engine.projections import Projections
from fmoe.engine.stats import EngineStats
from fmoe.errors import ConfigError, FmoeError

PREDICTION_WINDOW = 8       # one-token steps between two looks of "auto" prediction at the store's disk reads


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
            weights = {"qkv": Projections(ops, [checkpoint.load(f"{a}.{n}") for n in ("q_proj", "k_proj", "v_proj")]),
                       "o_proj": linear(f"{a}.o_proj")}
            weights["q_norm"], weights["k_norm"] = vector(f"{a}.q_norm.weight"), vector(f"{a}.k_norm.weight")
            self.mixer = GatedAttention(ops, cfg, weights)
        else:
            a = f"{p}.linear_attn"
            weights = {"in_proj": Projections(ops, [checkpoint.load(f"{a}.{n}")
                                                    for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")]),
                       "out_proj": linear(f"{a}.out_proj")}
            weights["conv1d"] = ops.asarray(np.asarray(checkpoint.load(f"{a}.conv1d.weight"), dtype=np.float32))
            weights["A_log"], weights["dt_bias"] = vector(f"{a}.A_log"), vector(f"{a}.dt_bias")
            weights["norm"] = vector(f"{a}.norm.weight")
            self.mixer = GatedDeltaNet(ops, cfg, weights)
        m = f"{p}.mlp"
        moe_weights = {"gates": Projections(ops, [checkpoint.load(f"{m}.gate"),
                                                  checkpoint.load(f"{m}.shared_expert_gate")])}
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


def _expert_provider(ops, checkpoint, source, gpu_memory_budget: int | None):
    """Where the layers get their experts: on CUDA with quantized experts, the VRAM tier over the store or the
    in-memory checkpoint (fmoe.engine.device_experts); otherwise the store (streaming layout) or the checkpoint."""
    on_cuda = getattr(getattr(ops, "device", None), "type", None) == "cuda"
    if gpu_memory_budget and not on_cuda:
        raise ConfigError("--gpu-memory-budget needs --device cuda")
    if on_cuda:
        from fmoe.engine.device_experts import CheckpointExperts, DeviceExperts

        host = source if source is not None else CheckpointExperts(checkpoint)
        if DeviceExperts.supports(host, checkpoint.config):
            return DeviceExperts(ops, host, checkpoint.config, gpu_memory_budget)
        if gpu_memory_budget is not None:
            raise ConfigError("--gpu-memory-budget applies to quantized experts (a streaming layout or an mlx "
                              "quantized checkpoint); this checkpoint's experts are dense: they all go to the GPU")
    return InMemoryExperts(ops, checkpoint) if source is None else StreamedExperts(ops, source)


class Model:
    def __init__(self, checkpoint, backend: str = "torch", dtype: str = "float32", device: str | None = None,
                 experts_per_token: int | None = None, expert_source=None, predict_experts: bool = False,
                 gpu_memory_budget: int | None = None):
        self.checkpoint = checkpoint
        self.cfg: ModelConfig = checkpoint.config
        self.ops = get_backend(backend, dtype, device)
        ops, cfg = self.ops, self.cfg
        self.moe_stats = MoEStats()
        self.experts = _expert_provider(ops, checkpoint, expert_source, gpu_memory_budget)
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
        self.compute_s = 0.0
        self._graph = None          # fmoe.engine.cuda_graph.DecodeGraph once used; False when capture failed
        preload = getattr(self.experts, "preload_if_fits", None)
        if preload is not None and preload():
            predict_experts = False     # every expert in VRAM: nothing to predict
        self.set_prediction(predict_experts)

    @classmethod
    def load(cls, path: str | Path, backend: str = "torch", dtype: str = "float32", device: str | None = None,
             experts_per_token: int | None = None, stream: dict | None = None, predict_experts: bool | None = None,
             gpu_memory_budget: int | None = None):
        """Open a checkpoint directory. ``stream`` (streaming layout only) holds ExpertStore options:
        ``mode`` ('page-cache' | 'direct'), ``memory_budget`` (bytes), ``verify``, ``io_threads``.
        ``gpu_memory_budget`` (CUDA, streaming layout): bytes of experts kept in VRAM
        (default: the free VRAM once the other weights are loaded, less a margin: fmoe.engine.device_experts)."""
        checkpoint = open_checkpoint(path)
        source = None
        if hasattr(checkpoint, "expert_source"):
            source = checkpoint.expert_source(**(stream or {}))
            if predict_experts in (None, "auto") and str(device or "").startswith("cuda"):
                predict_experts = False     # CUDA: the prediction's host sync would cost more than it saves
            elif predict_experts is None:
                predict_experts = "auto"
        elif stream:
            raise ConfigError(f"{path}: streaming options need the streaming layout (run `fmoe convert` first)")
        return cls(checkpoint, backend, dtype, device, experts_per_token, source,
                   predict_experts if predict_experts == "auto" else bool(predict_experts), gpu_memory_budget)

    def set_experts_per_token(self, k: int) -> None:
        if not 1 <= k <= self.cfg.num_experts:
            raise ConfigError(f"experts per token must be in 1..{self.cfg.num_experts}, got {k}")
        self.experts_per_token = k
        for layer in self.layers:
            layer.moe.top_k = k

    def set_prediction(self, on: bool | str) -> None:
        """Expert prediction (each layer prefetches what its router is likely to pick, from the hidden state before
        attention): True, False, or "auto": on while the store reads experts from the disk, off while every expert
        comes from memory (a warm model in RAM, where it would cost a router product per layer for nothing); looked
        at every PREDICTION_WINDOW one-token steps from the store's disk_bytes counter."""
        self.predict_experts = on
        self._auto_prediction = on == "auto"
        self._auto_steps, self._auto_disk = 0, None
        for layer in self.layers:
            layer.predict = bool(on)

    def _retune_prediction(self) -> None:
        disk = int(self.experts.stats().get("disk_bytes", 0) or 0)
        if self._auto_disk is not None:
            on = disk > self._auto_disk
            for layer in self.layers:
                layer.predict = on
        self._auto_disk = disk

    def set_route_override(self, fn) -> None:
        """Benchmarks: ``fn(layer, T) -> expert ids [T, k]`` replaces the router's choice (its softmax still weighs
        the chosen experts); None restores the router."""
        for layer in self.layers:
            layer.moe.route_override = fn

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
        if len(ids) == 1 and not all_logits and self._graph_eligible():
            from fmoe.engine.cuda_graph import try_graph_step

            t0 = time.perf_counter()
            logits = try_graph_step(self, cache, ids[0])
            if logits is not None:
                self.ops.sync()
                self.compute_s += time.perf_counter() - t0
                return logits
        with self.ops.step_context(len(ids)):
            return self._forward(ids, cache, all_logits)

    def _graph_eligible(self) -> bool:
        """One-token steps replay CUDA graphs on the GPU expert tier: one graph for the whole step when every expert
        is in VRAM and nothing needs the host, else one graph per stretch between two layers' routed experts
        (fmoe/engine/cuda_graph.py)."""
        if (self._graph is False or not hasattr(self.experts, "moe_decode")
                or getattr(self.ops.device, "type", None) != "cuda"
                or os.environ.get("FMOE_CUDA_GRAPH", "1") == "0" or any(layer.predict for layer in self.layers)):
            return False
        return not self.experts.complete or all(layer.moe.route_override is None for layer in self.layers)

    def _forward(self, ids: list[int], cache: ModelCache, all_logits: bool):
        t0 = time.perf_counter()
        ops = self.ops
        T, offset = len(ids), cache.offset
        x = ops.embedding(self.embed, ids)
        cos, sin = self.rope.tables(offset, T)
        logits = self.run_layers(x, cache, cos, sin, offset, all_logits)
        cache.tokens.extend(ids)
        ops.sync()
        self.compute_s += time.perf_counter() - t0
        if self._auto_prediction and T == 1:
            self._auto_steps += 1
            if self._auto_steps % PREDICTION_WINDOW == 0:
                self._retune_prediction()
        return logits if all_logits else logits[0]

    def run_layers(self, x, cache: ModelCache, cos, sin, offset, all_logits: bool = False):
        """Embeddings ``x`` [T, hidden] through every layer, the final norm and lm_head: float32 logits of the last
        position ([1, vocab]) or of all. ``offset``: the first position (an int), or a captured step's
        DevicePosition (fmoe/engine/cuda_graph.py)."""
        ops = self.ops
        for layer, state in zip(self.layers, cache.layers):
            x = layer(x, state, self.rope, cos, sin, offset)
        if not all_logits:
            x = x[x.shape[0] - 1:]
        x = ops.rms_norm(x, self.norm, self.cfg.rms_norm_eps)
        return ops.astype(ops.linear(x, self.lm_head), "float32")

    def count_replayed_step(self, lookups: bool = True) -> None:
        """A replayed CUDA graph step: count what the eager step would have (routed tokens, and the expert lookups
        unless the replay made them itself)."""
        for layer in self.layers:
            layer.moe.count(1, layer.moe.top_k)
        if lookups:
            self.experts.count_replayed(sum(layer.moe.top_k for layer in self.layers))

    def save_counters(self) -> tuple:
        return (vars(self.moe_stats).copy(), getattr(self.experts, "hits", 0), getattr(self.experts, "misses", 0))

    def restore_counters(self, saved: tuple) -> None:
        """Counters back to ``save_counters``' (a graph capture's warm-up steps are not the model's tokens)."""
        vars(self.moe_stats).update(saved[0])
        if hasattr(self.experts, "hits"):
            self.experts.hits, self.experts.misses = saved[1], saved[2]

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
