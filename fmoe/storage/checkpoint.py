"""Checkpoint layouts mapped to the engine's canonical weight names (docs/design.md, Interfaces).

Two on-disk layouts are read straight from safetensors, lazily:

* Hugging Face bf16/fp32 (``Qwen3_5MoeForCausalLM`` / ``...ForConditionalGeneration`` / ``Qwen3NextForCausalLM``):
  experts fused (``mlp.experts.gate_up_proj`` [E, 2I, H], ``mlp.experts.down_proj`` [E, H, I]) or one tensor per
  expert (``mlp.experts.E.{gate,up,down}_proj.weight``); zero-centred RMSNorm weights (the engine stores ``1 + w``);
  conv1d weight [C, 1, K].
* mlx-lm (quantized or not): ``switch_mlp`` stacked experts, affine group-wise ``weight/scales/biases`` with the bit
  width per tensor derived from shapes (and the config's per-path overrides), pre-shifted norms, conv1d [C, K, 1].

Prefixes (``model.``, ``model.language_model.``, ``language_model.model.``) are stripped; ``mtp.*`` and vision
tensors are ignored. Qwen3-Next's fused, per-key-head interleaved ``in_proj_qkvz``/``in_proj_ba`` are reordered
into Qwen3.5's ``in_proj_qkv``/``in_proj_z``/``in_proj_b``/``in_proj_a`` rows at load time.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

import numpy as np

from fmoe.storage.config import ModelConfig
from fmoe.storage.safetensors_file import SafetensorsDir
from fmoe.errors import CheckpointError
from fmoe.kernels.quant import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, QuantizedWeight, bf16_to_f32

Linear = Union[np.ndarray, QuantizedWeight]
ExpertWeights = tuple  # (gate_proj, up_proj, down_proj), each a Linear

_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.")
_IGNORED = re.compile(r"^(mtp\.|model\.visual\.|visual\.|vision_tower\.|model\.mtp\.)")
_ZERO_CENTRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "q_norm.weight", "k_norm.weight")


def _canonical(name: str) -> str | None:
    if _IGNORED.match(name):
        return None
    if name.startswith(("lm_head.", "language_model.lm_head.")):
        return name.removeprefix("language_model.")
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return bf16_to_f32(a)
    return np.asarray(a, dtype=np.float32)


class Checkpoint:
    """A model directory opened lazily: config + tensors under canonical names."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = ModelConfig.from_file(self.path)
        self.st = SafetensorsDir(self.path)
        self.names_map: dict[str, str] = {}          # canonical -> file name
        for raw in self.st.names():
            c = _canonical(raw)
            if c is not None:
                self.names_map[c] = raw
        conv_key = next((k for k in self.names_map if k.endswith("linear_attn.conv1d.weight")), None)
        if conv_key is None:
            raise CheckpointError(f"{self.path}: no linear-attention conv1d weight found; not a Qwen3.5/Qwen3-Next model?")
        conv_shape = self.st.info[self.names_map[conv_key]].shape
        # HF stores [C, 1, K]; mlx-lm stores [C, K, 1] and pre-shifted norms.
        self.layout = "mlx" if (len(conv_shape) == 3 and conv_shape[-1] == 1 and conv_shape[1] != 1) else "hf"
        if any(k.endswith(".scales") for k in self.names_map):
            self.layout = "mlx"
        q = self.config.quantization or {}
        self.default_group_size = int(q.get("group_size", 64))
        self._check_layers()

    # ----------------------------------------------------------------------------------------- raw access
    def has(self, canonical: str) -> bool:
        return canonical in self.names_map

    def raw(self, canonical: str) -> tuple[np.ndarray, str]:
        try:
            fname = self.names_map[canonical]
        except KeyError:
            raise CheckpointError(f"{self.path}: missing tensor {canonical!r} (any prefix)") from None
        return self.st.array(fname), self.st.info[fname].dtype

    def _shape(self, canonical: str) -> tuple[int, ...]:
        return self.st.info[self.names_map[canonical]].shape

    def _where(self, canonical: str) -> str:
        fname = self.names_map[canonical]
        return f"tensor {fname!r} in {self.st.info[fname].file}"

    def _expect_shape(self, canonical: str, shape: tuple[int, ...]) -> None:
        got = self._shape(canonical)
        if tuple(got) != tuple(shape):
            raise CheckpointError(f"{self._where(canonical)}: shape {list(got)}, expected {list(shape)}")

    # ----------------------------------------------------------------------------------------- weights
    def tensor(self, canonical: str) -> np.ndarray:
        """A small unquantized tensor as float32, with the engine's conventions applied (norm shift, conv [C, K])."""
        a, dtype = self.raw(canonical)
        if dtype not in ("BF16", "F16", "F32"):
            raise CheckpointError(f"{self._where(canonical)}: dtype {dtype}, expected a float tensor")
        out = to_float32(a, dtype)
        if canonical.endswith("conv1d.weight"):
            out = out.reshape(out.shape[0], -1)
        elif self.layout == "hf" and (canonical.endswith(_ZERO_CENTRED) or canonical == "norm.weight"):
            out = out + 1.0
        return out

    def _bits_for(self, prefix: str, w_shape, s_shape) -> tuple[int, int]:
        q = self.config.quantization or {}
        for key in (prefix, "model." + prefix, "language_model.model." + prefix, "model.language_model." + prefix):
            o = q.get(key)
            if isinstance(o, dict) and "bits" in o:
                bits, gs = int(o["bits"]), int(o.get("group_size", self.default_group_size))
                if bits not in SUPPORTED_BITS or gs not in SUPPORTED_GROUP_SIZES:
                    raise CheckpointError(
                        f"{self._where(prefix + '.weight')}: config.json quantizes it at {bits} bits, group {gs}; "
                        f"supported: bits {', '.join(map(str, SUPPORTED_BITS))}, groups "
                        f"{', '.join(map(str, SUPPORTED_GROUP_SIZES))}")
                return bits, gs
        gs = self.default_group_size
        in_features = s_shape[-1] * gs
        bits = 32 * w_shape[-1] / in_features
        if bits not in SUPPORTED_BITS:
            raise CheckpointError(f"{self._where(prefix + '.weight')}: cannot derive bit width from shapes "
                                  f"{list(w_shape)} and scales {list(s_shape)} with group size {gs}")
        return int(bits), gs

    def linear(self, prefix: str, index: int | None = None, out_in: tuple[int, int] | None = None) -> Linear:
        """The linear ``prefix`` (dense float32 [out, in] or QuantizedWeight), optionally one slice of a stack."""
        wname = prefix + ".weight"
        if self.has(prefix + ".scales"):
            w, wdt = self.raw(wname)
            s, sdt = self.raw(prefix + ".scales")
            b, bdt = self.raw(prefix + ".biases")
            if wdt != "U32":
                raise CheckpointError(f"{self._where(wname)}: quantized weight must be uint32, got {wdt}")
            if sdt != bdt or s.shape != b.shape:
                raise CheckpointError(f"{self._where(prefix + '.biases')}: scales/biases mismatch")
            bits, gs = self._bits_for(prefix, w.shape, s.shape)
            if index is not None:
                w, s, b = w[index], s[index], b[index]
            if sdt not in ("BF16", "F16", "F32"):
                raise CheckpointError(f"{self._where(prefix + '.scales')}: unsupported scales dtype {sdt}")
            qw = QuantizedWeight(w, s, b, bits, gs)
            if out_in is not None and (w.shape[-2], s.shape[-1] * gs) != tuple(out_in):
                raise CheckpointError(
                    f"{self._where(wname)}: quantized shape [{w.shape[-2]}, {s.shape[-1] * gs}] expected {list(out_in)}")
            return qw
        a, dtype = self.raw(wname)
        if dtype not in ("BF16", "F16", "F32"):
            raise CheckpointError(f"{self._where(wname)}: dtype {dtype}, expected a float tensor")
        if index is not None:
            a = a[index]
        if out_in is not None and tuple(a.shape) != tuple(out_in):
            raise CheckpointError(f"{self._where(wname)}: shape {list(a.shape)}, expected {list(out_in)}")
        return to_float32(a, dtype)

    def expert(self, layer: int, e: int) -> ExpertWeights:
        cfg = self.config
        H, I = cfg.hidden_size, cfg.moe_intermediate_size
        p = f"layers.{layer}.mlp"
        if not 0 <= e < cfg.num_experts:
            raise CheckpointError(f"expert {e} out of range 0..{cfg.num_experts - 1}")
        if self.has(f"{p}.switch_mlp.gate_proj.weight"):
            return tuple(self.linear(f"{p}.switch_mlp.{n}", e, oi)
                         for n, oi in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))))
        if self.has(f"{p}.experts.gate_up_proj"):
            self._expect_shape(f"{p}.experts.gate_up_proj", (cfg.num_experts, 2 * I, H))
            self._expect_shape(f"{p}.experts.down_proj", (cfg.num_experts, H, I))
            gu, dt = self.raw(f"{p}.experts.gate_up_proj")
            dn, dt2 = self.raw(f"{p}.experts.down_proj")
            gu = to_float32(gu[e], dt)
            return gu[:I], gu[I:], to_float32(dn[e], dt2)
        if self.has(f"{p}.experts.{e}.gate_proj.weight"):
            return tuple(self.linear(f"{p}.experts.{e}.{n}", None, oi)
                         for n, oi in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))))
        raise CheckpointError(f"{self.path}: missing tensors of expert {e} in layer {layer} "
                              f"(looked for switch_mlp, experts.gate_up_proj and experts.{e}.gate_proj)")

    # ----------------------------------------------------------------------------------------- non-expert weights
    def non_expert_names(self) -> list[str]:
        """Canonical names of every non-expert weight the model needs (linears without a suffix)."""
        cfg = self.config
        names = ["embed_tokens.weight", "norm.weight"]
        if not cfg.tie_word_embeddings:
            names.append("lm_head")
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}"
            names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
            if cfg.is_full_attention(i):
                names += [f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
                names += [f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"]
            else:
                la = f"{p}.linear_attn"
                names += [f"{la}.{n}" for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")]
                names += [f"{la}.conv1d.weight", f"{la}.dt_bias", f"{la}.A_log", f"{la}.norm.weight"]
            names += [f"{p}.mlp.gate", f"{p}.mlp.shared_expert_gate"]
            names += [f"{p}.mlp.shared_expert.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
        return names

    def load(self, name: str) -> Linear:
        """One canonical non-expert weight: a linear (no suffix) or a tensor (``.weight``, ``A_log``, ...)."""
        if name == "lm_head" and self.config.tie_word_embeddings:
            name = "embed_tokens"
        if name.endswith(("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")) and self.config.is_qwen3_next:
            return self._qwen3_next_split(name)
        if name.endswith((".weight", "A_log", "dt_bias")):
            if name == "embed_tokens.weight" and self.has("embed_tokens.scales"):
                return self.linear("embed_tokens")
            return self.tensor(name)
        return self.linear(name, out_in=self._linear_shape(name))

    def _linear_shape(self, name: str) -> tuple[int, int] | None:
        cfg = self.config
        H = cfg.hidden_size
        kd = cfg.linear_num_key_heads * cfg.linear_key_head_dim
        vd = cfg.linear_num_value_heads * cfg.linear_value_head_dim
        last = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        table = {
            "lm_head": (cfg.vocab_size, H), "embed_tokens": (cfg.vocab_size, H),
            "q_proj": (cfg.num_attention_heads * cfg.head_dim * 2, H),
            "k_proj": (cfg.num_key_value_heads * cfg.head_dim, H),
            "v_proj": (cfg.num_key_value_heads * cfg.head_dim, H),
            "o_proj": (H, cfg.num_attention_heads * cfg.head_dim),
            "in_proj_qkv": (2 * kd + vd, H), "in_proj_z": (vd, H),
            "in_proj_b": (cfg.linear_num_value_heads, H), "in_proj_a": (cfg.linear_num_value_heads, H),
            "out_proj": (H, vd), "gate": (cfg.num_experts, H), "shared_expert_gate": (1, H),
        }
        if parent == "shared_expert":
            S = cfg.shared_expert_intermediate_size
            return {"gate_proj": (S, H), "up_proj": (S, H), "down_proj": (H, S)}[last]
        return table.get(last)

    def _qwen3_next_split(self, name: str) -> Linear:
        """Qwen3-Next: rows of in_proj_qkvz / in_proj_ba are grouped per key head; reorder into Qwen3.5's layout."""
        cfg = self.config
        la, part = name.rsplit(".", 1)
        Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        dk, dv, r = cfg.linear_key_head_dim, cfg.linear_value_head_dim, Hv // Hk
        if part in ("in_proj_qkv", "in_proj_z"):
            src = self.linear(f"{la}.in_proj_qkvz")
            per = 2 * dk + 2 * r * dv
            rows = np.arange(Hk * per).reshape(Hk, per)
            q, k, v, z = rows[:, :dk], rows[:, dk:2 * dk], rows[:, 2 * dk:2 * dk + r * dv], rows[:, 2 * dk + r * dv:]
            order = np.concatenate([q.ravel(), k.ravel(), v.ravel()]) if part == "in_proj_qkv" else z.ravel()
        else:
            src = self.linear(f"{la}.in_proj_ba")
            rows = np.arange(Hk * 2 * r).reshape(Hk, 2 * r)
            order = (rows[:, :r] if part == "in_proj_b" else rows[:, r:]).ravel()
        if isinstance(src, QuantizedWeight):
            return QuantizedWeight(np.ascontiguousarray(src.weight[order]), np.ascontiguousarray(src.scales[order]),
                                   np.ascontiguousarray(src.biases[order]), src.bits, src.group_size)
        return np.ascontiguousarray(src[order])

    # ----------------------------------------------------------------------------------------- validation
    def _check_layers(self) -> None:
        """Fail early, naming the tensor, if a layer's mixer or router is missing."""
        cfg = self.config
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}"
            need = [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight", f"{p}.mlp.gate.weight"]
            if cfg.is_full_attention(i):
                need.append(f"{p}.self_attn.q_proj.weight")
            elif cfg.is_qwen3_next:
                need.append(f"{p}.linear_attn.in_proj_qkvz.weight")
            else:
                need.append(f"{p}.linear_attn.in_proj_qkv.weight")
            for n in need:
                if not self.has(n):
                    raise CheckpointError(f"{self.path}: missing tensor {n!r} (layer {i}, {cfg.layer_types[i]})")
        for n in ("embed_tokens.weight", "norm.weight") + (() if cfg.tie_word_embeddings else ("lm_head.weight",)):
            if not self.has(n):
                raise CheckpointError(f"{self.path}: missing tensor {n!r}")

    def close(self) -> None:
        self.st.close()


def open_checkpoint(path: str | Path):
    """Open a model directory: the streaming layout (fmoe convert/synth), an mlx-lm or a Hugging Face checkpoint."""
    path = Path(path)
    try:
        from fmoe.storage.stream_layout import is_streaming_layout, open_streaming
    except ImportError:  # pragma: no cover - streaming layout module not present
        is_streaming_layout = None
    if is_streaming_layout is not None and is_streaming_layout(path):
        return open_streaming(path)
    return Checkpoint(path)
