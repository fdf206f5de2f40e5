"""Tiny random-weight models built with transformers (the reference), saved as real checkpoints, for tests.

Layouts produced:
* ``hf``: what ``Qwen3_5MoeForCausalLM.save_pretrained`` writes (one tensor per expert, ``model.`` prefix);
* ``release``: how Qwen publishes Qwen3.5 (``model_type: qwen3_5_moe`` with ``text_config``, tensors under
  ``model.language_model.``, fused ``experts.gate_up_proj``/``down_proj``, an ``mtp.*`` tensor to ignore);
* ``mlx``: the release layout converted by mlx-lm's own converter (optionally quantized).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fmoe.bench.random_models import mlx_convert, randomise_norms, to_release_layout  # noqa: F401

DATA = Path(__file__).resolve().parent / "data"  # test data kept in the repository (tests/data/SOURCES.md)
CORPUS = ("the quick brown fox jumps over the lazy dog 0123456789 what is the weather in paris today? "
          "call the calculator tool with an expression and report the result. hello world, how are you? ") * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>",
            "</tool_response>", "<think>", "</think>"]

SHAPES = {
    # value heads > key heads, top-k 2, vocab padded beyond the tokenizer
    "qwen3_5_a": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                      linear_value_head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, vocab_size=320),
    # equal heads, top-k 3, explicit layer_types not every 4th, wider experts
    "qwen3_5_b": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=64, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=32,
                      linear_value_head_dim=32, num_experts=6, num_experts_per_tok=3, moe_intermediate_size=64,
                      shared_expert_intermediate_size=64, vocab_size=384,
                      layer_types=["linear_attention", "full_attention", "linear_attention"]),
}
# the demo model's choice: input and output embeddings tied (no lm_head tensor in the checkpoint)
SHAPES["qwen3_5_tied"] = dict(SHAPES["qwen3_5_a"], tie_word_embeddings=True)
# for the streaming layout: every 4th layer full attention (what mlx-lm supports), group 64 divides every input size
SHAPES["stream"] = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
    num_experts=6, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64,
    vocab_size=384)
NEXT_SHAPE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                  num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                  vocab_size=320, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])


def make_tokenizer(dst: Path, vocab_size: int = 300) -> None:
    """A small byte-level BPE with the Qwen special tokens and the Qwen3.5 chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    tok.add_special_tokens(SPECIALS)
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    template = (DATA / "reference/qwen3_5/chat_template.jinja").read_text()
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": template}))


def build_hf(dst: Path, shape: str = "qwen3_5_a", seed: int = 0):
    """Save a random Qwen3.5-MoE (or Qwen3-Next with shape='next') in transformers' default layout."""
    torch.manual_seed(seed)
    if shape == "next":
        from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
        model = Qwen3NextForCausalLM(Qwen3NextConfig(**NEXT_SHAPE)).eval()
    else:
        from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**SHAPES[shape])).eval()
    randomise_norms(model, seed)
    model.save_pretrained(dst)
    make_tokenizer(dst, min(300, model.config.vocab_size))
    return model


def prompt_ids(n: int = 32, vocab: int = 300, seed: int = 0) -> list[int]:
    return np.random.RandomState(seed).randint(0, vocab, size=n).tolist()
