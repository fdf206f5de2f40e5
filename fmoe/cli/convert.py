"""``fmoe convert SRC DST [--bits 2|3|4|5|6|8] [--group-size 32|64|128] [--force] [--threads N]``: a Hugging Face
bf16 or mlx-lm checkpoint (or a streaming layout) -> the streaming layout (fmoe.storage.convert does the work).

    fmoe convert ~/models/Qwen3.5-397B-A17B ~/models/q397-stream --bits 4 --verify
"""
from __future__ import annotations

import argparse
import sys

from fmoe.errors import FmoeError
from fmoe.storage.convert import convert


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="fmoe convert", description=__doc__.splitlines()[0].strip('"`'))
    p.add_argument("src", help="Hugging Face bf16 or mlx-lm checkpoint directory")
    p.add_argument("dst", help="output directory (streaming layout)")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 5, 6, 8), default=None,
                   help="expert bits (default: the source's, or 4 from bf16)")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128), default=None,
                   help="quantization group size (default: the source's, or 64)")
    p.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--verify", action="store_true",
                   help="read the result back and check every expert and non-expert checksum of the manifest")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import signal
    import threading

    def _terminate(signum, frame):     # SIGTERM unwinds like Ctrl-C: the temporary folder is removed
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        convert(args.src, args.dst, args.bits, args.group_size, overwrite=args.force,
                progress=not args.no_progress, threads=args.threads, verify=args.verify)
    except FmoeError as e:
        print(f"fmoe convert: error: {e}", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 0

