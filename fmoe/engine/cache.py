"""Per-sequence state: a KV cache for full-attention layers, conv + recurrent state for Gated DeltaNet layers.

KV cache: keys and values live in preallocated buffers ``[Hkv, capacity, D]``; a step writes its new positions in
place, and the buffer grows by chunks (1.5x, at least 256 positions) only when full, so decoding does not re-copy the
whole cache at every token (before: a concat per step, O(S) bytes copied per token).

Static states: a captured CUDA decode step (fmoe/engine/cuda_graph.py) works on fixed tensors and updates them in
place (``static=True``); a snapshot of such a state copies its tensors, so that it stays what it was.

Snapshots: ``snapshot()`` is a cheap shallow copy (of states that are not static).  The linear-attention state
arrays of a state that is not static are never mutated in place (each step makes new ones).  A KV buffer may be shared by a state and its snapshots: each remembers its own ``length``, the
buffer remembers how far anyone has written (``filled``); a state may append in place only at the buffer's tip, and
copies its prefix into a fresh buffer otherwise (copy on divergence, sized from the positions needed rounded up to a
chunk, not from the old buffer's capacity), so resuming a snapshot never disturbs another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHUNK = 256


class KVBuffer:
    __slots__ = ("k", "v", "filled", "capacity")

    def __init__(self, k, v, capacity: int):
        self.k, self.v, self.filled, self.capacity = k, v, 0, capacity


def _dtype_name(x) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]       # torch.bfloat16 / mlx.core.float32 -> "bfloat16" / "float32"


@dataclass
class AttentionState:
    buf: KVBuffer | None = None
    length: int = 0
    grows: int = 0          # buffer allocations so far (a growth copies the prefix once)
    static: bool = False    # the buffer belongs to a captured decode step: written in place at a device position

    @property
    def keys(self):         # [Hkv, S, D] view of the filled part
        return None if self.buf is None else self.buf.k[:, :self.length]

    @property
    def values(self):
        return None if self.buf is None else self.buf.v[:, :self.length]

    @property
    def capacity(self) -> int:
        return 0 if self.buf is None else self.buf.capacity

    def append(self, ops, k, v) -> None:
        """Add ``k``/``v`` [Hkv, T, D] after the ``length`` positions held."""
        T, n = k.shape[1], self.length
        need = n + T
        b = self.buf
        if b is None or b.filled != n or need > b.capacity:
            if b is not None and b.filled == n:
                # appending at the tip of a full buffer: grow geometrically (1.5x, at least CHUNK)
                cap = max(need, b.capacity + max(CHUNK, b.capacity // 2))
            else:
                # a fresh state, or a copy on divergence (a resumed snapshot): size from what is needed, not from the
                # old buffer's capacity, so a chain of resumed turns does not grow the buffer 1.5x per turn
                cap = max(need, CHUNK)
            cap = -(-cap // CHUNK) * CHUNK
            shape = (k.shape[0], cap, k.shape[2])
            nb = KVBuffer(ops.zeros(shape, _dtype_name(k)), ops.zeros(shape, _dtype_name(v)), cap)
            if n:
                nb.k[:, :n] = b.k[:, :n]
                nb.v[:, :n] = b.v[:, :n]
            b = self.buf = nb
            self.grows += 1
        b.k[:, n:need] = k
        b.v[:, n:need] = v
        b.filled = need
        self.length = need

    def write_at(self, pos, k, v) -> None:
        """Captured decode: write one position's ``k``/``v`` [Hkv, 1, D] at ``pos`` (an int64 device tensor [1]);
        the caller advances ``length`` after the replay."""
        self.buf.k.index_copy_(1, pos, k)
        self.buf.v.index_copy_(1, pos, v)

    def detached(self) -> "AttentionState":
        """A copy owning its own buffer (of a static state, for a snapshot)."""
        if self.buf is None:
            return AttentionState(None, self.length, self.grows)
        cap = max(CHUNK, -(-self.length // CHUNK) * CHUNK)
        nb = KVBuffer(self.buf.k[:, :cap].clone(), self.buf.v[:, :cap].clone(), cap)
        nb.filled = self.length
        return AttentionState(nb, self.length, self.grows)


@dataclass
class LinearState:
    conv: Any = None      # [K-1, C] last pre-conv inputs
    recurrent: Any = None  # [Hv, dk, dv] float32
    static: bool = False  # the tensors belong to a captured decode step: updated in place

    def detached(self) -> "LinearState":
        return LinearState(None if self.conv is None else self.conv.clone(),
                           None if self.recurrent is None else self.recurrent.clone())


@dataclass
class ModelCache:
    layers: list
    tokens: list[int] = field(default_factory=list)   # ids already folded into the state

    @property
    def offset(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls, layer_types: list[str]) -> "ModelCache":
        return cls([AttentionState() if t == "full_attention" else LinearState() for t in layer_types])

    def snapshot(self) -> "ModelCache":
        return ModelCache([s.detached() if s.static else type(s)(**vars(s)) for s in self.layers], list(self.tokens))
