"""Session 12: error of the int16-activation arithmetic with x quantized per group to B bits (symmetric, round to
nearest), on the weights of tests/kernels/test_kernels.py (_weights), as the tests measure it: max |y - ref| / max |ref|.
B = 8 is the int8-activation scheme (vpmaddubsw against int8 x); 15/16 are the kernel's split-byte / int16 x."""
import numpy as np
from fmoe.kernels.quant import quantize, dequantize

def _weights(rng, out=24, inp=256, group_size=32):
    w = (rng.standard_normal((out, inp)) * 0.05).astype(np.float32)
    w[0, :group_size] = 0.0; w[1, :group_size] = 0.75
    w[2, :group_size] = np.abs(w[2, :group_size]); w[3, :group_size] = -np.abs(w[3, :group_size]); w[4, 5] = 3.0
    return w

def qx(x, gs, bits):
    qmax = 2 ** (bits - 1) - 1
    g = x.reshape(x.shape[0], -1, gs)
    s = np.abs(g).max(-1, keepdims=True) / qmax
    s[s == 0] = 1
    return (np.rint(g / s) * s).reshape(x.shape)

rng = np.random.default_rng(0)
for bits in (2, 3):
    for gs, inp in ((32, 800), (64, 1024), (128, 384)):
        worst = {b: 0.0 for b in (8, 12, 13, 14, 15, 16)}
        for trial in range(20):
            q = quantize(_weights(rng, out=70, inp=inp, group_size=gs), bits, gs)
            d = dequantize(q).astype(np.float64)
            x = rng.standard_normal((5, inp)).astype(np.float32)
            ref = x.astype(np.float64) @ d.T
            for b in worst:
                y = qx(x.astype(np.float64), gs, b) @ d.T
                worst[b] = max(worst[b], np.abs(y - ref).max() / np.abs(ref).max())
        print(f"bits {bits} gs {gs}: " + "  ".join(f"x{b}: {v:.2e}" for b, v in worst.items()) + "   (test bound 1e-3)")
