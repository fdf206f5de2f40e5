"""``fmoe bench NAME [options]``: the benchmarks of fmoe/bench/, each a ratio measured within one run.

    fmoe bench kernels --json          # quantized matvec vs memory read bandwidth
    fmoe bench stream --layers 8       # streamed decode vs the disk/memory bound
    fmoe bench grammar | decode | fastforward | serve

Results go to bench/results/ (each benchmark's --out); ``fmoe bench NAME --help`` lists its options.
"""
from __future__ import annotations

import importlib
import sys

BENCHES = ("kernels", "stream", "grammar", "decode", "fastforward", "serve")


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] not in BENCHES:
        print(f"usage: fmoe bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return importlib.import_module(f"fmoe.bench.{argv[0]}").main(argv[1:]) or 0
