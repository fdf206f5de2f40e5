"""Typed model configuration parsed from a Hugging Face ``config.json``.

Supported ``model_type`` values: ``qwen3_5_moe`` (text fields nested under ``text_config``), ``qwen3_5_moe_text``
(what transformers writes for a text-only model) and ``qwen3_next``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmoe.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next")

_REQUIRED = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
    "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
    "num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
)


@dataclass
class ModelConfig:
    model_type: str                      # the top-level model_type of the file
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    layer_types: list[str]
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e7
    partial_rotary_factor: float = 0.25
    norm_topk_prob: bool = True
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 262144
    eos_token_id: list[int] = field(default_factory=list)
    quantization: dict[str, Any] | None = None   # mlx-lm "quantization" block, when present
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_qwen3_next(self) -> bool:
        return self.model_type == "qwen3_next"

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def is_full_attention(self, layer: int) -> bool:
        return self.layer_types[layer] == "full_attention"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        text = raw
        if model_type == "qwen3_5_moe":
            text = raw.get("text_config")
            if not isinstance(text, dict):
                raise ConfigError(f"{source}: model_type 'qwen3_5_moe' needs a 'text_config' object")
        missing = [k for k in _REQUIRED if k not in text]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)} (model_type {model_type!r})")
        n_layers = int(text["num_hidden_layers"])
        layer_types = text.get("layer_types")
        if layer_types is None:
            interval = int(text.get("full_attention_interval", 4))
            layer_types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)]
        if len(layer_types) != n_layers or any(t not in ("full_attention", "linear_attention") for t in layer_types):
            raise ConfigError(f"{source}: layer_types must list {n_layers} entries of 'full_attention'/'linear_attention'")
        if text.get("mlp_only_layers"):
            raise ConfigError(f"{source}: dense 'mlp_only_layers' are not supported (every layer must be MoE)")
        if int(text.get("decoder_sparse_step", 1)) != 1:
            raise ConfigError(f"{source}: decoder_sparse_step != 1 is not supported (every layer must be MoE)")
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ConfigError(f"{source}: rope type {rope_type!r} is not supported (only 'default')")
        rope_theta = rope.get("rope_theta", text.get("rope_theta", 1e7))
        prf = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))
        eos = raw.get("eos_token_id", text.get("eos_token_id"))
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        hidden = int(text["hidden_size"])
        n_heads = int(text["num_attention_heads"])
        cfg = cls(
            model_type=model_type,
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=int(text["num_key_value_heads"]),
            head_dim=int(text.get("head_dim") or hidden // n_heads),
            vocab_size=int(text["vocab_size"]),
            linear_num_key_heads=int(text["linear_num_key_heads"]),
            linear_num_value_heads=int(text["linear_num_value_heads"]),
            linear_key_head_dim=int(text["linear_key_head_dim"]),
            linear_value_head_dim=int(text["linear_value_head_dim"]),
            linear_conv_kernel_dim=int(text.get("linear_conv_kernel_dim", 4)),
            num_experts=int(text["num_experts"]),
            num_experts_per_tok=int(text["num_experts_per_tok"]),
            moe_intermediate_size=int(text["moe_intermediate_size"]),
            shared_expert_intermediate_size=int(text["shared_expert_intermediate_size"]),
            layer_types=list(layer_types),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            partial_rotary_factor=float(prf),
            norm_topk_prob=bool(text.get("norm_topk_prob", True)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            max_position_embeddings=int(text.get("max_position_embeddings", 262144)),
            eos_token_id=eos,
            quantization=raw.get("quantization") or raw.get("quantization_config"),
            raw=raw,
        )
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ConfigError(f"{source}: num_attention_heads must be a multiple of num_key_value_heads")
        if cfg.linear_num_value_heads % cfg.linear_num_key_heads:
            raise ConfigError(f"{source}: linear_num_value_heads must be a multiple of linear_num_key_heads")
        if not 0 < cfg.num_experts_per_tok <= cfg.num_experts:
            raise ConfigError(f"{source}: num_experts_per_tok must be in 1..num_experts")
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no config.json") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON: {e}") from None
        return cls.from_dict(raw, source=str(path))
