"""The GPU expert tier: experts kept in VRAM, one byte region per expert in a slot pool, run by the grouped quantized
mat-vec (fmoe/kernels/grouped_qmv.py): two launches for all of a token's experts, gate and up with silu(gate) * up in
one, then the down projection.

    experts = DeviceExperts(ops, host, cfg, budget_bytes)   # host: an ExpertStore, or CheckpointExperts (in memory)
    y, with_shared = experts.moe_decode(layer, x, probs, k, renorm, shared_weight)   # one token: top-k of probs
    prepared = experts.get(layer, [3, 17])      # prefill: (gate, up, down) TorchQLinear views of the slots
    experts.preload_if_fits()                   # every expert into VRAM when the budget holds them all

Tiers: VRAM (this pool, least recently used evicted first, ``budget_bytes``; default: the free device memory once
the non-expert weights are loaded, less a margin) -> host RAM (the store's cache, or the page cache) -> disk. A
slot holds an expert's region exactly as the streaming layout stores it (the layer's ExpertTemplate: 9 arrays at
fixed offsets), so a miss is one copy: an asynchronous DMA on the compute stream, from a pinned buffer the store read
it into (``ExpertStore.set_allocator``), or, in page-cache mode, from the page cache itself: a layer file wholly in
the page cache has its read-only mapping registered with CUDA (fmoe/engine/cuda_host.py), within a pin budget (half
the RAM; ``FMOE_PIN_PAGE_CACHE`` sets it, 0 turns it off), and its experts are then copied straight from the file's
pages (``ExpertStore.serve_mapped``), with no CPU copy. The source is held until the copy's event has completed. The shared expert of each layer gets a permanent slot when its arrays have the routed experts' shapes
(Qwen3.5: the same size), so it runs in the same launches.

When every expert is resident (``complete``, after ``preload_if_fits``), the slots of a token's experts are looked
up on the GPU (``slot_map``), so a decode step has no host synchronisation at all (what fmoe/engine/cuda_graph.py
captures); otherwise decode reads the router's choice once per layer (one sync) and copies the misses in.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import time
import warnings
from collections import OrderedDict, deque

import numpy as np
import torch

from fmoe.engine import cuda_host
from fmoe.errors import ConfigError
from fmoe.kernels.grouped_qmv import grouped_gate_up, grouped_qmv
from fmoe.kernels.quant import QuantizedWeight
from fmoe.storage.stream_layout import ExpertTemplate
from fmoe.units import parse_size

_TORCH_DTYPE = {"uint32": torch.int32, "int32": torch.int32, "uint16": torch.bfloat16, "int16": torch.bfloat16,
                "float32": torch.float32, "float16": torch.float16}
MARGIN = 2 << 30          # VRAM left free by the default budget (activations, KV cache, allocator slack)
PIN_RECHECK_S = 2.0       # a layer file not wholly in the page cache is looked at again after this long
PIN_RESIDENT = 0.98       # the share of a layer file in the page cache that makes it worth registering


def pin_budget() -> int:
    """Bytes of page cache the VRAM tier may register for DMA: ``FMOE_PIN_PAGE_CACHE`` (a size; 0: none), else half
    the physical memory (registered pages cannot be reclaimed while the model runs)."""
    env = os.environ.get("FMOE_PIN_PAGE_CACHE")
    if env is not None:
        try:
            return parse_size(env)
        except ValueError as ex:
            raise ConfigError(f"FMOE_PIN_PAGE_CACHE: {ex}") from None
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class CheckpointExperts:
    """An in-memory checkpoint as the host tier: ``get(layer, ids)`` -> quantized (gate, up, down) per expert."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint

    def get(self, layer: int, ids):
        return [tuple(self.checkpoint.expert(layer, e)) for e in ids]

    def prefetch(self, layer: int, ids) -> None:
        pass

    def template(self, layer: int) -> ExpertTemplate | None:
        ew = self.checkpoint.expert(layer, 0)
        if not all(isinstance(q, QuantizedWeight) for q in ew):
            return None
        return ExpertTemplate.from_weights(*ew)

    def stats(self) -> dict:
        return {"mode": "in-memory", "bytes_read": 0, "cache_hit_rate": None, "io_wait_s": 0.0}


def host_template(host, layer: int) -> ExpertTemplate | None:
    """The expert template of ``layer`` on an ExpertStore (its layout) or a CheckpointExperts (None: not quantized)."""
    layout = getattr(host, "layout", None)
    return layout.layers[layer].template if layout is not None else host.template(layer)


class _Pool:
    """S slots of one template's expert regions: a [S, stride] byte tensor and a typed strided view per array."""

    def __init__(self, template: ExpertTemplate, slots: int, device):
        self.template, self.slots = template, slots
        self.data = torch.empty((slots, template.stride), dtype=torch.uint8, device=device)
        self.views = {}
        for a in template.arrays:
            dt = _TORCH_DTYPE[a.dtype]
            n = a.nbytes
            v = self.data[:, a.offset:a.offset + n].view(dt)
            self.views[a.name] = v.view(slots, *a.shape)
        self.quant = template.quant

    def matrix(self, proj: str):
        """(w, scales, biases, bits, group_size) of ``proj`` over all slots."""
        bits, gs = self.quant[proj]
        return self.views[f"{proj}.weight"], self.views[f"{proj}.scales"], self.views[f"{proj}.biases"], bits, gs

    def prepared(self, slot: int, dtype):
        from fmoe.kernels.torch_qlinear import TorchQLinear

        out = []
        for proj in ("gate_proj", "up_proj", "down_proj"):
            w, s, b, bits, gs = self.matrix(proj)
            out.append(TorchQLinear(QuantizedWeight(w[slot], s[slot], b[slot], bits, gs), dtype=dtype))
        return tuple(out)


def _region(ew, template: ExpertTemplate):
    """The expert's bytes as one numpy array when its 9 arrays sit at the template's offsets of one buffer (what the
    ExpertStore returns: views into its read buffer), else None."""
    arrays = [a for q in ew for a in (q.weight, q.scales, q.biases)]
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return None
    start = arrays[0].__array_interface__["data"][0] - template.arrays[0].offset
    for a, spec in zip(arrays, template.arrays):
        if a.__array_interface__["data"][0] != start + spec.offset or not a.flags.c_contiguous:
            return None
    return np.ctypeslib.as_array((ctypes.c_uint8 * template.nbytes).from_address(start))


class DeviceExperts:
    def __init__(self, ops, host, cfg, budget_bytes: int | None = None):
        self.ops, self.host, self.cfg = ops, host, cfg
        self.device = ops.device
        self.requested_budget = budget_bytes
        self.L, self.E = cfg.num_hidden_layers, cfg.num_experts
        self.templates = [host_template(host, i) for i in range(self.L)]
        self.pools: dict[int, _Pool] | None = None       # by template index
        self.layer_pool: list[int] = []
        self.slot_host = np.full((self.L, self.E), -1, dtype=np.int64)
        self.slot_map: torch.Tensor | None = None        # [L, E] int32 on the device, valid when complete
        self._lru: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._free: dict[int, list[int]] = {}
        self._shared: dict[int, tuple] = {}               # layer -> the shared expert's prepared linears
        self.shared_slot: dict[int, torch.Tensor] = {}     # layer -> [1] int32 slot of its shared expert
        self._inflight: deque = deque()                    # (event, host buffers) of copies not yet known complete
        self.complete = False
        self.segments = None                               # a SegmentedGraph while it captures (cuda_graph.py)
        self.hits = self.misses = self.evictions = self.bytes_copied = self.overflows = 0
        self._registered: dict[int, tuple] = {}           # layer -> (mapping, address, bytes, uint8 tensor of it)
        self._pin_checked: dict[int, tuple] = {}          # layer -> (next look, the wait after it)
        self.pinned_bytes, self.register_s = 0, 0.0
        self.pin_budget = 0
        if self.device.type == "cuda" and hasattr(host, "set_allocator"):
            host.set_allocator(_pinned)
            if getattr(host, "mode", None) == "page-cache" and host.memory_budget == 0 and \
                    cuda_host.read_only_supported(self.device.index or 0):
                self.pin_budget = pin_budget()

    @staticmethod
    def supports(host, cfg) -> bool:
        """Quantized experts of templates the kernels read (every layer's): the tier applies."""
        try:
            return all(host_template(host, i) is not None for i in range(cfg.num_hidden_layers))
        except Exception:  # noqa: BLE001 - a source that cannot say: the per-matrix path
            return False

    # ------------------------------------------------------------------------------------------ pools

    def register_shared(self, layer: int, shared: tuple) -> None:
        """The layer's shared expert (prepared TorchQLinear gate, up, down): pooled if it matches the template."""
        self._shared[layer] = shared

    def _pools(self) -> dict[int, _Pool]:
        if self.pools is not None:
            return self.pools
        kinds: list[ExpertTemplate] = []
        for t in self.templates:
            if not any(t.same_as(k) for k in kinds):
                kinds.append(t)
        self.layer_pool = [next(i for i, k in enumerate(kinds) if t.same_as(k)) for t in self.templates]
        budget = self.requested_budget
        if budget is None:
            if self.device.type != "cuda":
                raise ConfigError("the device expert tier needs a byte budget off CUDA")
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = max(0, free - MARGIN)
        k = max(self.cfg.num_experts_per_tok, 1)
        self.pools = {}
        for i, t in enumerate(kinds):
            layers = [j for j, p in enumerate(self.layer_pool) if p == i]
            share = budget * len(layers) // self.L
            routed = min(len(layers) * self.E, max(share // t.stride, k))
            shared = [j for j in layers if self._shared_fits(j, t)]
            try:
                pool = _Pool(t, routed + len(shared), self.device)
            except torch.OutOfMemoryError:
                raise ConfigError(f"the GPU has no room for {routed} experts of {t.stride / 2**20:.2f} MiB "
                                  f"(budget {budget / 2**30:.2f} GiB): lower --gpu-memory-budget") from None
            self.pools[i] = pool
            self._free[i] = list(range(routed - 1, -1, -1))
            for n, j in enumerate(shared):
                slot = routed + n
                self._copy_linears(pool, slot, self._shared[j])
                self.shared_slot[j] = torch.tensor([slot], dtype=torch.int32, device=self.device)
        return self.pools

    def _shared_fits(self, layer: int, t: ExpertTemplate) -> bool:
        lins = self._shared.get(layer)
        if lins is None or len(lins) != 3 or not all(hasattr(m, "q") and m.q is not None for m in lins):
            return False
        specs = {a.name: a for a in t.arrays}
        for proj, m in zip(("gate_proj", "up_proj", "down_proj"), lins):
            if (m.bits, m.group_size) != t.quant[proj]:
                return False
            for part in ("weight", "scales", "biases"):
                a, spec = getattr(m.q, part), specs[f"{proj}.{part}"]
                if tuple(a.shape) != spec.shape or a.dtype != _TORCH_DTYPE[spec.dtype]:
                    return False
        return True

    def _copy_linears(self, pool: _Pool, slot: int, lins) -> None:
        for proj, m in zip(("gate_proj", "up_proj", "down_proj"), lins):
            for part in ("weight", "scales", "biases"):
                pool.views[f"{proj}.{part}"][slot].copy_(getattr(m.q, part).to(self.device))

    @property
    def capacity_bytes(self) -> int:
        pools = self._pools()
        return sum((p.slots - sum(1 for j in self.shared_slot if self.layer_pool[j] == i)) * p.template.stride
                   for i, p in pools.items())

    # ------------------------------------------------------------------------------------------ residency

    def _retire_copies(self) -> None:
        while self._inflight and self._inflight[0][0].query():
            self._inflight.popleft()

    def _ensure(self, layer: int, ids, overflow: dict | None = None) -> list:
        """Slots of ``ids`` of ``layer``, copying the misses in (LRU eviction, never of an expert of this call).
        A miss that finds no slot: with an ``overflow`` dict its host weights go there (slot None), the caller
        prepares it apart; without, an error naming the budget."""
        pools = self._pools()
        pi = self.layer_pool[layer]
        pool, free = pools[pi], self._free[pi]
        out: list = [None] * len(ids)
        missing = []
        for n, e in enumerate(ids):
            s = int(self.slot_host[layer, e])
            if s >= 0:
                out[n] = s
                self._lru.move_to_end((layer, e))
            else:
                missing.append(n)
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        if not missing:
            return out
        self._retire_copies()
        keep = {(layer, e) for e in ids}
        if self.pin_budget and layer not in self._registered:
            self._register_file(layer)
        want = [ids[n] for n in missing]
        mapped = self._registered.get(layer)
        if mapped is not None and not getattr(self.host, "verify", False):
            # the file's pages are locked: copy each expert straight from its span of the mapping
            nb = pool.template.nbytes
            ws = [mapped[3][off:off + nb] for off, _ in self.host.mapped_spans(layer, want)]
        else:
            ws = self.host.get(layer, want)
        held = []
        for n, ew in zip(missing, ws):
            slot = self._take_slot(pi, free, keep)
            if slot is None:
                if overflow is not None:
                    overflow[ids[n]] = ew if not torch.is_tensor(ew) else self.host.get(layer, [ids[n]])[0]
                    self.overflows += 1
                    continue
                raise ConfigError(f"the GPU expert tier holds {pool.slots} experts of layer {layer}'s kind, fewer "
                                  f"than one token needs ({len(ids)}): raise --gpu-memory-budget or lower the "
                                  "experts per token")
            self._copy_in(pool, slot, ew, held)
            self.bytes_copied += pool.template.nbytes
            self.slot_host[layer, ids[n]] = slot
            self._lru[(layer, ids[n])] = slot
            out[n] = slot
        if held and self.device.type == "cuda":
            ev = torch.cuda.Event()
            ev.record()
            self._inflight.append((ev, held))
        return out

    @staticmethod
    def _copy_in(pool: _Pool, slot: int, ew, held: list) -> None:
        """Copy one expert into ``slot``: from a span of a registered mapping (a uint8 tensor) or its whole region
        in a host buffer (held in ``held`` until the copy completes), both asynchronous; or array by array."""
        if torch.is_tensor(ew):
            pool.data[slot, :ew.shape[0]].copy_(ew, non_blocking=True)
            return
        region = _region(ew, pool.template)
        if region is not None:
            pool.data[slot, :region.nbytes].copy_(torch.from_numpy(region), non_blocking=True)
            held.append(ew)
            return
        for proj, q in zip(("gate_proj", "up_proj", "down_proj"), ew):
            for part in ("weight", "scales", "biases"):
                src = np.ascontiguousarray(getattr(q, part))
                src = src.view(np.int32) if src.dtype == np.uint32 else src
                t = torch.from_numpy(src.view(np.int16)).view(torch.bfloat16) if src.dtype in (
                    np.uint16, np.int16) else torch.from_numpy(src)
                pool.views[f"{proj}.{part}"][slot].copy_(t)

    def _register_file(self, layer: int) -> None:
        """Register the layer file's mapping for DMA once it is wholly in the page cache and the pin budget holds
        it; then the store serves its cached experts as views of the mapping. A file left out is looked at again
        after PIN_RECHECK_S, then twice as long each time (up to 64x)."""
        now = time.monotonic()
        due, wait = self._pin_checked.get(layer, (now, PIN_RECHECK_S))
        if now < due:
            return
        self._pin_checked[layer] = (now + wait, min(2 * wait, 64 * PIN_RECHECK_S))    # backs off while refused
        m, address = self.host.mapping(layer)
        nbytes = -(-len(m) // mmap.PAGESIZE) * mmap.PAGESIZE
        if self.pinned_bytes + nbytes > self.pin_budget or (self.host.file_resident(layer) or 0.0) < PIN_RESIDENT:
            return
        t0 = time.perf_counter()
        if not cuda_host.register(address, nbytes, read_only=True):
            warnings.warn(f"CUDA refused to register the page cache of {self.host.layout.layers[layer].file} "
                          f"({nbytes / 2**30:.2f} GiB) for DMA: experts are copied through pinned buffers")
            self.pin_budget = 0
            return
        self.register_s += time.perf_counter() - t0
        with warnings.catch_warnings():             # read-only memory: torch warns that it cannot be written
            warnings.simplefilter("ignore")
            whole = torch.from_numpy(np.frombuffer(m, np.uint8))
        self._registered[layer] = (m, address, nbytes, whole)
        self.pinned_bytes += nbytes
        self.host.serve_mapped(layer)

    def _take_slot(self, pi: int, free: list, keep: set):
        if free:
            return free.pop()
        for key in self._lru:                      # least recently used first
            if key not in keep and self.layer_pool[key[0]] == pi:
                slot = self._lru.pop(key)
                self.slot_host[key] = -1
                self.evictions += 1
                return slot
        return None

    def preload_if_fits(self) -> bool:
        """Read every expert into VRAM when the pools hold them all; then decoding needs no host sync."""
        pools = self._pools()
        for pi in pools:
            if len(self._free[pi]) + sum(1 for k in self._lru if self.layer_pool[k[0]] == pi) < \
                    self.layer_pool.count(pi) * self.E:
                return False
        for layer in range(self.L):
            for a in range(0, self.E, 64):
                self._ensure(layer, list(range(a, min(self.E, a + 64))))
        self.slot_map = torch.as_tensor(self.slot_host.astype(np.int32), device=self.device)
        self.complete = True
        self.hits = self.misses = 0
        return True

    # ------------------------------------------------------------------------------------------ compute

    def host_ids(self, ids, known=None) -> list[int]:
        """The ids a token routed to, on the host: read back from the device (the one host sync of a layer), or
        ``known`` (replayed routing) after waiting for the stream as that read would have."""
        if known is None:
            return [int(e) for e in ids.tolist()]
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return [int(e) for e in known]

    def to_device(self, values, dtype: str = "int32"):
        """Small host integers (a list or array) as a device tensor of ``dtype`` ("int32"/"int64"), through pinned
        memory so that the copy is asynchronous (from pageable memory the driver may first wait for the stream:
        here, for the expert copies just queued)."""
        t = torch.as_tensor(np.asarray(values), dtype=getattr(torch, dtype))
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def moe_decode(self, layer: int, x, probs, k: int, renorm: bool, shared_weight, pick=None):
        """One token's routed experts from the router's probabilities ``probs`` [E] (float32, on the device): the top
        ``k``, or the ids ``pick()`` returns on the host (a benchmark's replayed routing), their weights renormalised
        when ``renorm``; ``sum_k w_k * expert_k(x)`` (+ ``shared_weight * shared(x)`` when the shared expert is
        pooled). Returns (y [1, H] in x's dtype, whether the shared expert is in y)."""
        pool = self._pools()[self.layer_pool[layer]]
        if self.segments is not None:          # capturing a segmented step: fmoe/engine/cuda_graph.py
            ids, weights, slots = self.segments.boundary(self, layer, probs, k, renorm, pick)   # renorm after slots
        else:
            if pick is None:
                weights, ids = torch.topk(probs, k)
                host_ids = None
            else:
                host_ids = [int(e) for e in pick()]
                ids = self.to_device(host_ids, "int64")
                weights = probs[ids]
            if self.complete:
                slots = self.slot_map[layer].index_select(0, ids)
                self.hits += k
            else:
                host_ids = self.host_ids(ids, host_ids)
                slots = self.to_device(self._ensure(layer, host_ids))
            if renorm:
                weights = weights / weights.sum()
        # whether a kernel that does not write the slots runs between their last write and gate+up (the weights'
        # renormalisation, cast or concatenation below): then gate+up may start its copies while that kernel drains
        slots_ready = renorm or weights.dtype != torch.float32
        shared = self.shared_slot.get(layer)
        w = weights.to(torch.float32)
        if shared is not None:
            slots = torch.cat([slots, shared])
            w = torch.cat([w, shared_weight.reshape(1).to(torch.float32)])
            slots_ready = True

        def rows(inp, proj, slots_ready=False):
            w, s, b, bits, gs = pool.matrix(proj)
            return grouped_qmv(inp, w, s, b, slots, bits, gs, slots_ready)

        gate, up = pool.matrix("gate_proj"), pool.matrix("up_proj")
        if gate[3:] == up[3:]:      # one launch: silu(gate) * up (fmoe/kernels/grouped_qmv.py)
            h = grouped_gate_up(x, gate[:3], up[:3], slots, *gate[3:], slots_ready)   # [R, I] float32
        else:
            h = torch.nn.functional.silu(rows(x, "gate_proj")) * rows(x, "up_proj")
        d = rows(h, "down_proj", slots_ready=True)    # the kernel before it made h, not the slots or weights
        y = (d * w[:, None]).sum(0, keepdim=True)
        return y.to(x.dtype), shared is not None

    def get(self, layer: int, ids):
        """Prefill: prepared (gate, up, down) per expert, views of their slots (or prepared apart when the pool
        cannot hold all of this call's experts)."""
        extra: dict = {}
        slots = self._ensure(layer, list(ids), overflow=extra)
        pool = self._pools()[self.layer_pool[layer]]
        dtype = self.ops.dtype
        out = []
        for e, s in zip(ids, slots):
            if s is None:
                out.append(tuple(self.ops.prepare_linear(w) for w in extra[e]))
            else:
                out.append(pool.prepared(s, dtype))
        return out

    def count_replayed(self, experts: int) -> None:
        """A captured decode step replayed: ``experts`` lookups, all hits (the graph runs only when complete)."""
        self.hits += experts

    def prefetch(self, layer: int, ids) -> None:
        missing = [e for e in ids if self.slot_host[layer, e] < 0]
        if missing:
            self.host.prefetch(layer, missing)

    def stats(self) -> dict:
        s = dict(self.host.stats())
        n = self.hits + self.misses
        resident = sum(self.pools[self.layer_pool[k[0]]].template.nbytes for k in self._lru) if self.pools else 0
        s.update(device_cache_budget=self.capacity_bytes if self.pools is not None else self.requested_budget,
                 device_resident_bytes=resident, device_cache_hits=self.hits, device_cache_misses=self.misses,
                 device_cache_evictions=self.evictions, device_cache_hit_rate=self.hits / n if n else None,
                 device_bytes_copied=self.bytes_copied, device_overflows=self.overflows,
                 device_complete=self.complete,
                 device_shared_pooled=len(self.shared_slot),
                 device_dma_layers=len(self._registered), device_dma_pinned_bytes=self.pinned_bytes,
                 device_dma_register_s=round(self.register_s, 3))
        return s

    def close(self) -> None:
        if self._registered and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._inflight.clear()
        for _m, address, _n, _whole in self._registered.values():
            cuda_host.unregister(address)
        self._registered.clear()
        close = getattr(self.host, "close", None)
        if close is not None:
            close()


def _pinned(nbytes: int):
    """A page-locked host buffer for the store's reads (numpy view of a pinned torch tensor, which it keeps alive)."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()
