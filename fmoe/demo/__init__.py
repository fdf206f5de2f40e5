"""The demo model the project trains itself: a seeded synthetic tool-calling corpus, a small byte-level BPE
tokenizer (1024 tokens) and an 18M-parameter Qwen3.5-MoE checkpoint with tied embeddings (``fmoe/demo/model``).

    fmoe.demo.datagen          seeded conversation generator (train / held-out splits), renderer, loss masks
    fmoe.demo.train_tokenizer  trains the BPE tokenizer and writes the tokenizer files into a model folder
    fmoe.demo.train            the training script (run on a GPU; CPU for smoke tests)
    device_scratch.sh          the device script of the shipped run (run 8: two GPUs, one schedule over several calls)

``MODEL_DIR`` is the shipped checkpoint (bf16 safetensors + tokenizer + chat template). DEMO_NOTES.md at the
repository root holds the training log and the numbers.
"""
from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"
HELDOUT_PATH = Path(__file__).resolve().parent / "heldout.jsonl"

__all__ = ["MODEL_DIR", "HELDOUT_PATH"]
