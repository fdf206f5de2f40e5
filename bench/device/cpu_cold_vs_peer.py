"""One mat-vec shape, cold and hot, beside the read-only peer of its packed words (qmv.cpp ``fmoe_read_bytes``), at 1
and 2 threads: whether a CPU mat-vec is bound by its arithmetic (cold = hot), by its memory reads (cold near the
peer) or by neither (session 15, 2-core Zen 5: bench/results/kernels_2core_session15.md).

    python3 bench/device/cpu_cold_vs_peer.py [BITS] [OUTxIN] [THREADS,...]    # default: 4 1024x4096 1,2

Cold rotates through 256 MB of distinct random matrices; every figure is the median over the calls of each call's
best of 5 repeats.
"""
import ctypes
import os
import sys

import numpy as np
import torch

from fmoe.bench.kernels import _random_qweights, best_times
from fmoe.kernels import native
from fmoe.kernels.torch_qlinear import TorchQLinear


def main() -> int:
    bits = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    shape = tuple(map(int, sys.argv[2].split("x"))) if len(sys.argv) > 2 else (1024, 4096)
    lib = native.load()
    qs = _random_qweights([shape] * int(256e6 // (shape[0] * shape[1] * bits / 8)), bits, 64,
                          np.random.default_rng(0))
    layers = [TorchQLinear(q) for q in qs]
    x = torch.randn(1, shape[1])
    out = ctypes.c_uint64()
    for th in (map(int, sys.argv[3].split(",")) if len(sys.argv) > 3 else (1, 2)):
        os.environ["FMOE_THREADS"] = str(th)
        cold = np.median(best_times([lambda L=L: L(x) for L in layers], 5))
        hot = np.median(best_times([lambda: layers[0](x)] * 50, 5))
        peer = np.median(best_times([lambda q=q: lib.fmoe_read_bytes(q.weight.ctypes.data, q.weight.nbytes // 64 * 64,
                                                                     th, ctypes.byref(out)) for q in qs], 5))
        nb, wb = layers[0].nbytes, qs[0].weight.nbytes
        print(f"{bits}-bit {shape} threads {th}: kernel cold {cold * 1e6:.1f} us ({nb / cold / 1e9:.1f} GB/s), hot "
              f"{hot * 1e6:.1f} us ({nb / hot / 1e9:.1f}), read peer of the words {peer * 1e6:.1f} us "
              f"({wb / peer / 1e9:.1f} GB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
