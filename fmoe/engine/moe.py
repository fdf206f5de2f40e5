"""Sparse MoE block: softmax router over all experts, top-k (runtime setting) renormalised, SwiGLU experts fetched
from an expert provider, plus a sigmoid-gated shared expert.

A chunk of T tokens is routed at once: each needed expert is fetched once and applied to all of its tokens
(batched prefill). Before the attention of a layer runs, the model may call ``predict`` so that the provider
starts reading the experts the router is likely to pick while attention computes (overlap). One token with the
CUDA expert tier (a provider with ``moe_decode``, fmoe/engine/device_experts.py) keeps routing on the GPU: top-k
there, and the routed and shared experts in grouped launches.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class MoEStats:
    routed_tokens: int = 0
    expert_calls: int = 0
    predicted: int = 0
    predicted_hits: int = 0
    fetch_s: float = 0.0      # time spent waiting for experts (get)

    def merge(self) -> dict:
        return {
            "expert_calls": self.expert_calls,
            "prediction_hit_rate": (self.predicted_hits / self.predicted) if self.predicted else None,
            "expert_wait_s": self.fetch_s,
            "predicted": self.predicted,
            "predicted_hits": self.predicted_hits,
        }


def route(probs: np.ndarray, k: int, renormalise: bool):
    """probs [T, E] float32 -> (ids [T, k], weights [T, k]) by descending probability."""
    if probs.shape[0] == 1:     # decode: the same steps on the row (1-D numpy calls cost less), the same values
        p = probs[0]
        top = np.argsort(-p, kind="stable")[:k]
        w = p[top]
        if renormalise:
            w = w / w.sum()
        return top[None], w.astype(np.float32)[None]
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, ids, axis=-1)
    if renormalise:
        weights = weights / weights.sum(-1, keepdims=True)
    return ids, weights.astype(np.float32)


class SparseMoE:
    def __init__(self, ops, cfg, layer: int, weights: dict, experts, stats: MoEStats):
        self.ops, self.cfg, self.layer = ops, cfg, layer
        # the router and the shared-expert gate read the same input: one matrix (fmoe.engine.projections) when given
        self.gates = weights.get("gates") or (lambda x: [ops.linear(x, weights["gate"]),
                                                        ops.linear(x, weights["shared_expert_gate"])])
        self.shared = (weights["shared_gate_proj"], weights["shared_up_proj"], weights["shared_down_proj"])
        self.experts = experts          # provider: get(layer, ids) -> prepared (gate, up, down); prefetch(layer, ids)
        self.stats = stats
        self.top_k = cfg.num_experts_per_tok
        self._predicted: set[int] | None = None
        self.route_override = None      # bench only: fn(layer, T) -> expert ids [T, k] instead of the router's top-k
        register = getattr(experts, "register_shared", None)
        if register is not None:
            register(layer, self.shared)

    def _mlp(self, x, gate, up, down):
        ops = self.ops
        return ops.linear(ops.silu(ops.linear(x, gate)) * ops.linear(x, up), down)

    def _probs(self, x) -> np.ndarray:
        return self.ops.to_numpy(self.ops.softmax(self.gates(x)[0], axis=-1))

    def _route(self, router_logits):
        probs = self.ops.to_numpy(self.ops.softmax(router_logits, axis=-1))
        if self.route_override is None:
            return route(probs, self.top_k, self.cfg.norm_topk_prob)
        ids = np.asarray(self.route_override(self.layer, router_logits.shape[0]), dtype=np.int64)
        weights = np.take_along_axis(probs, ids, axis=-1)
        if self.cfg.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdims=True)
        return ids, weights.astype(np.float32)

    def _decode_on_device(self, x):
        """One token with the GPU expert tier: routing stays on the device (top-k there), the routed experts and the
        shared expert run in one grouped launch per matrix kind (fmoe.engine.device_experts)."""
        ops = self.ops
        router_logits, shared_logit = self.gates(x)
        probs = ops.softmax(router_logits, axis=-1)[0]                     # [E] float32
        pick = None if self.route_override is None else \
            (lambda: np.asarray(self.route_override(self.layer, 1), dtype=np.int64)[0])
        sg = ops.sigmoid(shared_logit)
        y, with_shared = self.experts.moe_decode(self.layer, x, probs, self.top_k, self.cfg.norm_topk_prob, sg, pick)
        self.count(1, self.top_k)
        self._predicted = None
        if not with_shared:
            y = y + self._mlp(x, *self.shared) * sg
        return y

    def count(self, tokens: int, experts: int) -> None:
        self.stats.routed_tokens += tokens
        self.stats.expert_calls += experts

    def predict(self, x_normed) -> None:
        """Prefetch the experts the router picks for ``x_normed`` (an earlier hidden state)."""
        topk = getattr(self.ops, "topk", None)
        if x_normed.shape[0] == 1 and topk is not None:
            # decode: the k largest router logits in one op (the softmax keeps their order; on an exact tie of
            # probabilities the hint may name the other expert)
            uniq = sorted(topk(self.gates(x_normed)[0][0], self.top_k)[1].tolist())
        else:
            ids, _ = route(self._probs(x_normed), self.top_k, False)
            uniq = sorted(set(ids.ravel().tolist()))
        self._predicted = set(uniq)
        self.experts.prefetch(self.layer, uniq)

    def __call__(self, x):
        ops = self.ops
        T = x.shape[0]
        if T == 1 and hasattr(self.experts, "moe_decode"):
            return self._decode_on_device(x)
        router_logits, shared_logit = self.gates(x)
        sg = ops.sigmoid(shared_logit)
        ids, weights = self._route(router_logits)
        uniq = sorted(set(ids.ravel().tolist()))
        if self._predicted is not None:
            self.stats.predicted += len(uniq)
            self.stats.predicted_hits += len(self._predicted.intersection(uniq))
            self._predicted = None
        stacked_fn = getattr(self.experts, "stacked", None)  # the layer's experts stacked (MLX, in memory)
        stacked = stacked_fn(self.layer) if stacked_fn is not None else None
        if stacked is not None:  # mlx-lm's SwitchGLU: gather_qmm over the stacked experts, any T
            self.count(T, len(uniq))
            out = self._mlp(x, *self.shared) * sg
            return out + ops.switch_glu(x, stacked, ids, weights)
        t0 = time.perf_counter()
        fetched = self.experts.get(self.layer, uniq)
        self.stats.fetch_s += time.perf_counter() - t0
        self.count(T, len(uniq))
        if T == 1:
            wd = {e: float(weights[0, j]) for j, e in enumerate(ids[0].tolist())}
            ws = [wd[e] for e in uniq]
            fused = getattr(ops, "fused_experts", None)  # one native call for all experts (torch CPU float32)
            if fused is not None:
                y = fused(x, [*fetched, self.shared], [*ws, sg])  # the shared expert too, when it matches
                if y is None:
                    y = fused(x, fetched, ws)
                    if y is not None:
                        y = y + self._mlp(x, *self.shared) * sg
                if y is not None:
                    return y
            out = self._mlp(x, *self.shared) * sg
            for e, ew in zip(uniq, fetched):
                out = out + self._mlp(x, *ew) * wd[e]
            return out
        out = self._mlp(x, *self.shared) * sg
        w_full = np.zeros((T, self.cfg.num_experts), dtype=np.float32)
        np.put_along_axis(w_full, ids, weights, axis=-1)
        for e, ew in zip(uniq, fetched):
            tok = np.nonzero(w_full[:, e])[0]
            xe = ops.take_rows(x, tok)
            ye = self._mlp(xe, *ew) * ops.asarray(w_full[tok, e][:, None])
            out = ops.index_add(out, tok, ye)
        return out


class InMemoryExperts:
    """Experts served from an opened checkpoint (memory-mapped safetensors), prepared once on first use."""

    def __init__(self, ops, checkpoint):
        self.ops, self.checkpoint = ops, checkpoint
        self._prepared: dict[tuple[int, int], tuple] = {}
        self._stacked: dict[int, tuple | None] = {}

    def stacked(self, layer: int):
        """The layer's experts stacked and prepared once (backends with ``prepare_switch``, i.e. MLX's gather_qmm,
        on checkpoints that store them stacked and quantized), or None: then experts are applied one by one."""
        prep = getattr(self.ops, "prepare_switch", None)
        if prep is None:
            return None
        if layer not in self._stacked:
            p = f"layers.{layer}.mlp.switch_mlp"
            ck, names = self.checkpoint, ("gate_proj", "up_proj", "down_proj")
            has = getattr(ck, "has", None)
            ok = has is not None and all(has(f"{p}.{n}.weight") and has(f"{p}.{n}.scales") for n in names)
            self._stacked[layer] = prep(tuple(ck.linear(f"{p}.{n}") for n in names)) if ok else None
        return self._stacked[layer]

    def get(self, layer: int, ids):
        out = []
        for e in ids:
            key = (layer, e)
            if key not in self._prepared:
                self._prepared[key] = tuple(self.ops.prepare_linear(w) for w in self.checkpoint.expert(layer, e))
            out.append(self._prepared[key])
        return out

    def prefetch(self, layer: int, ids) -> None:
        pass

    def stats(self) -> dict:
        return {"mode": "in-memory", "bytes_read": 0, "cache_hit_rate": None, "io_wait_s": 0.0}


class StreamedExperts:
    """Experts read by an ExpertStore (fmoe.storage.expert_store) and prepared for the backend on use (the store's
    cache, or the page cache, is the memory tier; on CUDA fmoe.engine.device_experts adds the VRAM tier). Experts the
    store serves as views of its file mappings (zero-copy page-cache hits) sit at a fixed address, so what was
    prepared from them is kept (up to ``KEEP_PREPARED`` experts, least recently used dropped); others are prepared
    on every use."""

    KEEP_PREPARED = 8192

    def __init__(self, ops, store):
        self.ops, self.store = ops, store
        self._prepared: OrderedDict[tuple[int, int], tuple[int, tuple]] = OrderedDict()

    def get(self, layer: int, ids):
        out = []
        is_mapped = getattr(self.store, "is_mapped", None)
        for e, ew in zip(ids, self.store.get(layer, ids)):
            addr = ew[0].weight.__array_interface__["data"][0] if is_mapped is not None else None
            hit = self._prepared.get((layer, e))
            if hit is not None and hit[0] == addr:
                self._prepared.move_to_end((layer, e))
                out.append(hit[1])
                continue
            prepared = tuple(self.ops.prepare_linear(w) for w in ew)
            if addr is not None and is_mapped(layer, ew[0].weight):
                self._prepared[(layer, e)] = (addr, prepared)
                if len(self._prepared) > self.KEEP_PREPARED:
                    self._prepared.popitem(last=False)
            out.append(prepared)
        return out

    def prefetch(self, layer: int, ids) -> None:
        self.store.prefetch(layer, ids)

    def stats(self) -> dict:
        return self.store.stats()

    def close(self) -> None:
        self.store.close()
