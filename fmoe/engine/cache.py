"""Per-sequence state: a KV cache for full-attention layers, conv + recurrent state for Gated DeltaNet layers.

Arrays are never mutated in place (each step makes new ones), so ``snapshot()`` is a cheap shallow copy that later
steps cannot disturb: the agent keeps one at the end of each prompt and resumes from it on the next turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class AttentionState:
    keys: Any = None      # [Hkv, S, D]
    values: Any = None


@dataclass
class LinearState:
    conv: Any = None      # [K-1, C] last pre-conv inputs
    recurrent: Any = None  # [Hv, dk, dv] float32


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
        return ModelCache([type(s)(**vars(s)) for s in self.layers], list(self.tokens))
