"""``fmoe synth DST --like qwen3.5-397b-a17b [--layers N] [--experts E] [--top-k K] [--bits B] [--group-size G]``: a
random-weight model in the streaming layout at a real model's dimensions (fmoe.storage.synth does the work).

    fmoe synth /tmp/q397-synth --like qwen3.5-397b-a17b --layers 12 --experts 64 --bits 4
"""
from __future__ import annotations

import argparse
import sys

from fmoe.errors import FmoeError
from fmoe.storage.synth import PRESETS, synth


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="fmoe synth", description=__doc__.splitlines()[0].strip('"`'))
    p.add_argument("dst", help="output directory (streaming layout)")
    p.add_argument("--like", default="qwen3.5-397b-a17b", help=f"model dimensions: {', '.join(PRESETS)}")
    p.add_argument("--layers", type=int, default=None, help="number of layers (default: the model's)")
    p.add_argument("--experts", type=int, default=None, help="experts per layer (default: the model's)")
    p.add_argument("--top-k", type=int, default=None, help="experts per token (default: the model's)")
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        synth(args.dst, args.like, args.layers, args.experts, args.bits, args.group_size, args.top_k, args.seed,
              overwrite=args.force, progress=not args.no_progress)
    except FmoeError as e:
        print(f"fmoe synth: error: {e}", file=sys.stderr)
        return 1
    return 0

