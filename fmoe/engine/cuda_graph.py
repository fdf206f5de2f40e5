"""Captured decode steps on CUDA: one CUDA graph replays a whole token, every layer's kernels, with no Python and no
host synchronisation in between (decode on the GPU is otherwise bound by the host launching ~20 small kernels per
layer).

    graph = DecodeGraph(model)          # model on CUDA with every expert in VRAM (DeviceExperts.complete)
    logits = graph.step(cache, token)   # what model.forward([token], cache) returns
    graph = SegmentedGraph(model)       # experts in tiers: one graph per stretch between two layers' experts

``Model.forward`` uses it by itself for one-token steps when the model qualifies (``FMOE_CUDA_GRAPH=0`` turns it
off). What a graph needs, and how it is met:

* fixed tensors: the graph owns the per-layer state (KV buffers of ``capacity`` positions, conv and recurrent
  state). A cache it runs is adopted: its states are copied in once and point at the graph's tensors from then on
  (``static=True``: updated in place; a snapshot copies them, fmoe/engine/cache.py). Adopting another cache first
  gives the previous one copies of its own. A longer context than ``capacity`` re-allocates and captures again.
* no host values: the token id and the position are copied into device tensors before each replay; RoPE angles and
  the attention mask (positions written so far, over the whole buffer) are computed from them inside the graph.
* no host decisions: the routed experts' slots are looked up on the GPU (fmoe/engine/device_experts.py); where
  the experts are tiered, the step is cut at each layer's routed experts and the host decides between two graphs
  (SegmentedGraph).
"""
from __future__ import annotations

import gc
import warnings
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from fmoe.engine.cache import CHUNK, AttentionState, KVBuffer


@dataclass
class DevicePosition:
    """The position of a captured step, on the device: ``pos`` int64 [1], ``mask`` bool [capacity]."""
    pos: torch.Tensor
    mask: torch.Tensor


class DecodeGraph:
    def __init__(self, model):
        self.model = model
        self.ops = model.ops
        self.device = model.ops.device
        self.inputs = torch.zeros(2, dtype=torch.int64, device=self.device)      # token id, position
        self.inv_freq = torch.as_tensor(model.rope.inv_freq, device=self.device)
        self.capacity = 0
        self.states: list | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.holder = None
        self.captures = 0

    # ------------------------------------------------------------------------------------------ state

    def _allocate(self, capacity: int, like) -> None:
        """Fixed state tensors for ``capacity`` positions (shapes and dtypes from the cache ``like``'s states)."""
        holder = self.holder() if self.holder is not None else None
        if holder is not None:
            self._release(holder)
        cfg, ops = self.model.cfg, self.ops
        states = []
        for st in like.layers:
            if isinstance(st, AttentionState):
                shape = (cfg.num_key_value_heads, capacity, cfg.head_dim)
                states.append(KVBuffer(ops.zeros(shape, ops.dtype_name), ops.zeros(shape, ops.dtype_name), capacity))
            else:
                C = cfg.linear_num_key_heads * cfg.linear_key_head_dim * 2 + \
                    cfg.linear_num_value_heads * cfg.linear_value_head_dim
                states.append((ops.zeros((cfg.linear_conv_kernel_dim - 1, C), ops.dtype_name),
                               ops.zeros((cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                                          cfg.linear_value_head_dim), "float32")))
        self.states, self.capacity, self.graph = states, capacity, None
        self.arange = torch.arange(capacity, device=self.device)

    def _release(self, cache) -> None:
        """``cache`` stops sharing the graph's tensors: its states get copies of their own."""
        for i, st in enumerate(cache.layers):
            if st.static:
                cache.layers[i] = st.detached()
        self.holder = None

    def _adopt(self, cache) -> None:
        """Point ``cache``'s states at the graph's tensors, copying in what they hold (only where they differ)."""
        holder = self.holder() if self.holder is not None else None
        if holder is not None and holder is not cache:
            self._release(holder)
        for st, fixed in zip(cache.layers, self.states):
            if isinstance(st, AttentionState):
                if st.buf is not fixed:
                    n = st.length
                    if n:
                        fixed.k[:, :n].copy_(st.buf.k[:, :n])
                        fixed.v[:, :n].copy_(st.buf.v[:, :n])
                    st.buf = fixed
                fixed.filled = st.length
            else:
                conv, rec = fixed
                if st.conv is not conv:
                    conv.copy_(st.conv) if st.conv is not None else conv.zero_()
                    st.conv = conv
                if st.recurrent is not rec:
                    rec.copy_(st.recurrent) if st.recurrent is not None else rec.zero_()
                    st.recurrent = rec
            st.static = True
        self.holder = weakref.ref(cache)

    # ------------------------------------------------------------------------------------------ step

    def _run(self, cache):
        """The step as captured: embedding -> layers -> logits, from the device token id and position."""
        m, ops = self.model, self.ops
        ids, pos = self.inputs[0:1], self.inputs[1:2]
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = torch.cos(emb).to(ops.dtype), torch.sin(emb).to(ops.dtype)
        position = DevicePosition(pos, self.arange <= pos)
        x = ops.embedding(m.embed, ids)
        return m.run_layers(x, cache, cos, sin, position)[0]

    def _capture(self, cache) -> None:
        """Warm up twice on a side stream (compiles kernels, settles launch checks), restore the state the warm-up
        advanced, then capture one step."""
        m = self.model
        saved = [(s[0].clone(), s[1].clone()) for s in self.states if isinstance(s, tuple)]
        counters = m.save_counters()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run(cache)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._run(cache)
        for (conv, rec), (c0, r0) in zip([s for s in self.states if isinstance(s, tuple)], saved):
            conv.copy_(c0)
            rec.copy_(r0)
        m.restore_counters(counters)
        self.graph = graph
        self.captures += 1

    def _prepare(self, cache, token: int) -> None:
        """State tensors that hold the next position, ``cache`` adopted, the token and position on the device."""
        need = cache.offset + 1
        if self.states is None or need > self.capacity:
            self._allocate(max(2 * self.capacity, -(-(need + CHUNK) // CHUNK) * CHUNK), cache)
        self._adopt(cache)
        self.inputs.copy_(torch.tensor([int(token), cache.offset], dtype=torch.int64))

    def _advance(self, cache, token: int, lookups: bool = True):
        """After a replay: the cache holds one more position; the counters an eager step would have moved."""
        for st in cache.layers:
            if isinstance(st, AttentionState):
                st.length += 1
                st.buf.filled = st.length
        cache.tokens.append(int(token))
        self.model.count_replayed_step(lookups)
        return self.logits.clone()

    def step(self, cache, token: int):
        self._prepare(cache, token)
        if self.graph is None:
            self._capture(cache)
        self.graph.replay()
        return self._advance(cache, token)


class SegmentedGraph(DecodeGraph):
    """A decode step when the experts do not all fit in VRAM: the step is captured as one graph per stretch between
    two layers' routed experts (embedding + layer 0 up to its router, then each layer's experts + the next layer up
    to its router, ..., the last layer's experts + the output), and between two replays the host does what only it
    can: read the router's choice (the one sync of a layer), copy the misses in (DeviceExperts._ensure), write the
    experts' slots into the buffer the next graph reads. So a layer costs the host one replay, one sync and its
    misses' copies instead of ~40 kernel launches.

    The graphs share one memory pool and replay in the order they were captured, so a tensor that one graph writes
    and a later one reads keeps its address. Replayed routing (``Model.set_route_override``) is captured apart:
    the host writes each layer's ids before the graph that reads them, after waiting as the router's read would."""

    def __init__(self, model):
        super().__init__(model)
        self.graphs: list = []
        self.cuts: list[int] = []          # the layer whose experts follow graph i
        self.bufs: dict[int, tuple] = {}   # layer -> (ids int64 [k], slots int32 [k]) on the device
        self.mode: str | None = None       # "warm" or "capture" while _capture runs
        self.replayed_routing: bool | None = None
        self._pool = self._current = None

    def boundary(self, experts, layer: int, probs, k: int, renorm: bool, pick):
        """Called by DeviceExperts.moe_decode while warming up or capturing: (ids, weights, slots) on the device for
        the rest of the layer; during capture the current graph ends here and the next begins."""
        ids, slots = self.bufs[layer]
        weights = None
        if pick is None:
            weights, chosen = torch.topk(probs, k)
            ids.copy_(chosen)
        if self.mode == "capture":
            self._current.capture_end()
            self._current = torch.cuda.CUDAGraph()
            self._current.capture_begin(pool=self._pool)
            self.graphs.append(self._current)
            self.cuts.append(layer)
        else:
            self._resolve(layer, replay=False)
        if weights is None:
            weights = probs[ids]
        if renorm:
            weights = weights / weights.sum()
        return ids, weights, slots

    def _resolve(self, layer: int, replay: bool = True) -> None:
        """Between two graphs: the layer's routed ids on the host, the misses copied in, the slots written."""
        experts = self.model.experts
        ids, slots = self.bufs[layer]
        override = self.model.layers[layer].moe.route_override
        if override is not None and replay:
            known = np.asarray(override(layer, 1), dtype=np.int64)[0]
            ids.copy_(experts.to_device(known, "int64"))
            host = experts.host_ids(ids, known)
        else:           # the router's choice (warm-up with replayed routing: whatever the buffer holds)
            host = experts.host_ids(ids)
        slots.copy_(experts.to_device(experts._ensure(layer, host)))

    def _capture(self, cache) -> None:
        m = self.model
        self.replayed_routing = any(layer.moe.route_override is not None for layer in m.layers)
        self.bufs = {i: (torch.arange(layer.moe.top_k, dtype=torch.int64, device=self.device),
                         torch.zeros(layer.moe.top_k, dtype=torch.int32, device=self.device))
                     for i, layer in enumerate(m.layers)}
        saved = [(s[0].clone(), s[1].clone()) for s in self.states if isinstance(s, tuple)]
        counters = m.save_counters()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        m.experts.segments = self
        try:
            with torch.cuda.stream(side):
                self.mode = "warm"
                for _ in range(2):
                    self._run(cache)
                side.synchronize()
                gc.collect()
                self.mode = "capture"
                self._pool = torch.cuda.graph_pool_handle()
                self._current = torch.cuda.CUDAGraph()
                self.graphs, self.cuts = [self._current], []
                self._current.capture_begin(pool=self._pool)
                try:
                    self.logits = self._run(cache)
                finally:
                    self._current.capture_end()
            torch.cuda.current_stream(self.device).wait_stream(side)
        finally:
            m.experts.segments = None
            self.mode = self._current = None
        for (conv, rec), (c0, r0) in zip([s for s in self.states if isinstance(s, tuple)], saved):
            conv.copy_(c0)
            rec.copy_(r0)
        m.restore_counters(counters)
        self.graph = self.graphs[0]
        self.captures += 1

    def step(self, cache, token: int):
        self._prepare(cache, token)
        replayed = any(layer.moe.route_override is not None for layer in self.model.layers)
        if self.graph is None or replayed != self.replayed_routing:
            self._capture(cache)
        for i, graph in enumerate(self.graphs):
            graph.replay()
            if i < len(self.cuts):
                self._resolve(self.cuts[i])
        return self._advance(cache, token, lookups=False)


def try_graph_step(model, cache, token: int):
    """``model``'s DecodeGraph step, or None when it cannot be captured (warned once; the eager path runs)."""
    g = model._graph
    if g is None:
        g = model._graph = DecodeGraph(model) if model.experts.complete else SegmentedGraph(model)
    try:
        return g.step(cache, token)
    except Exception as e:  # noqa: BLE001 - whatever breaks capture: say so once, decode eagerly
        warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding without graphs")
        model._graph = False
        if g.holder is not None and g.holder() is not None:
            g._release(g.holder())
        return None


__all__ = ["DecodeGraph", "DevicePosition", "SegmentedGraph", "try_graph_step"]
