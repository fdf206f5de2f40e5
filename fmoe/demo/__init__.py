"""The demo model the project trained itself (``MODEL_DIR``): an 18M-parameter Qwen3.5-MoE checkpoint (bf16 safetensors,
tied embeddings, a 1024-token BPE with the Qwen special tokens and chat template) and the tools it learned.

    from fmoe.demo import MODEL_DIR              # the one place the demo model's path is defined
    from fmoe.tools.demo import demo_registry  # the 8 tools it learned live with the other tools

Its data generator, trainers and device scripts live outside the package, in ``training/``; the training log is
docs/log/demo-model.md.
"""
from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"

__all__ = ["MODEL_DIR"]
