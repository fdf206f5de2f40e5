"""Random-weight checkpoints in real layouts, for tests and benchmarks (transformers is the reference builder).

* ``to_release_layout``: a transformers text-model save rewritten the way Qwen publishes Qwen3.5 (``model_type:
  qwen3_5_moe`` with ``text_config``, tensors under ``model.language_model.``, fused experts, an ``mtp.*`` tensor);
* ``mlx_convert``: that layout converted by mlx-lm's own converter (optionally quantized).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch


def randomise_norms(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("dt_bias", "A_log")):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def to_release_layout(src: Path, dst: Path) -> None:
    """Rewrite a saved text model as Qwen's released layout (nested config, language_model prefix, fused experts)."""
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    sd = load_file(str(src / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    out = {}
    L, E = cfg["num_hidden_layers"], cfg["num_experts"]
    for k, v in sd.items():
        if ".mlp.experts." in k:
            continue
        nk = k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k
        out[nk] = v.float().numpy()
    for i in range(L):
        p = f"model.layers.{i}.mlp.experts"
        gu = [torch.cat([sd[f"{p}.{e}.gate_proj.weight"], sd[f"{p}.{e}.up_proj.weight"]], 0) for e in range(E)]
        out[f"model.language_model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(gu).float().numpy()
        out[f"model.language_model.layers.{i}.mlp.experts.down_proj"] = torch.stack(
            [sd[f"{p}.{e}.down_proj.weight"] for e in range(E)]).float().numpy()
    out["mtp.fc.weight"] = np.zeros((4, 4), np.float32)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"))
    text = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "transformers_version")}
    text["model_type"] = "qwen3_5_moe_text"
    (dst / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
        "text_config": text, "tie_word_embeddings": False, "vision_config": {}}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)


def mlx_convert(release_dir: Path, dst: Path, bits: int | None, group_size: int = 64) -> None:
    """mlx-lm's own converter, float32 activations (its bf16 quantized matmul is inaccurate on CPU)."""
    from mlx_lm import convert

    if bits is None:
        convert(str(release_dir), str(dst), dtype="float32")
    else:
        convert(str(release_dir), str(dst), quantize=True, q_bits=bits, q_group_size=group_size, dtype="float32")
