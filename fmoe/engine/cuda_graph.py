"""Captured decode steps on CUDA: one CUDA graph replays a whole token, every layer's kernels, with no Python and no
host synchronisation in between (decode on the GPU is otherwise bound by the host launching ~20 small kernels per
layer).

    graph = DecodeGraph(model)          # model on CUDA with every expert in VRAM (DeviceExperts.complete)
    logits = graph.step(cache, token)   # what model.forward([token], cache) returns

``Model.forward`` uses it by itself for one-token steps when the model qualifies (``FMOE_CUDA_GRAPH=0`` turns it
off). What a graph needs, and how it is met:

* fixed tensors: the graph owns the per-layer state (KV buffers of ``capacity`` positions, conv and recurrent
  state). A cache it runs is adopted: its states are copied in once and point at the graph's tensors from then on
  (``static=True``: updated in place; a snapshot copies them, fmoe/engine/cache.py). Adopting another cache first
  gives the previous one copies of its own. A longer context than ``capacity`` re-allocates and captures again.
* no host values: the token id and the position are copied into device tensors before each replay; RoPE angles and
  the attention mask (positions written so far, over the whole buffer) are computed from them inside the graph.
* no host decisions: the routed experts' slots are looked up on the GPU (fmoe/engine/device_experts.py).
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

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

    def step(self, cache, token: int):
        need = cache.offset + 1
        if self.states is None or need > self.capacity:
            self._allocate(max(2 * self.capacity, -(-(need + CHUNK) // CHUNK) * CHUNK), cache)
        self._adopt(cache)
        self.inputs.copy_(torch.tensor([int(token), cache.offset], dtype=torch.int64))
        if self.graph is None:
            self._capture(cache)
        self.graph.replay()
        for st in cache.layers:
            if isinstance(st, AttentionState):
                st.length += 1
                st.buf.filled = st.length
        cache.tokens.append(int(token))
        self.model.count_replayed_step()
        return self.logits.clone()


def try_graph_step(model, cache, token: int):
    """``model``'s DecodeGraph step, or None when it cannot be captured (warned once; the eager path runs)."""
    g = model._graph
    if g is None:
        g = model._graph = DecodeGraph(model)
    try:
        return g.step(cache, token)
    except Exception as e:  # noqa: BLE001 - whatever breaks capture: say so once, decode eagerly
        warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding without graphs")
        model._graph = False
        if g.holder is not None and g.holder() is not None:
            g._release(g.holder())
        return None


__all__ = ["DecodeGraph", "DevicePosition", "try_graph_step"]
