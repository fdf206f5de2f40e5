"""2-bit decode rows longer than 1024 codes go four (then two) weight rows per pass with the pass-ahead prefetch
(qmv.cpp ``multi_rows``, session 12): the same bits as each row on its own, and within the int16-mode tolerance of
the reference dequantize + matmul.  (test_kernels.py checks rows per pass only for 4 bits and K <= 1024.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmoe.kernels import native
from fmoe.kernels.quant import QuantizedWeight, dequantize, quantize
from fmoe.kernels.torch_qlinear import TorchQLinear

ISAS = native.supported_isas()


def _weights(rng, out, inp, group_size):
    w = (rng.standard_normal((out, inp)) * 0.05).astype(np.float32)
    w[0, :group_size] = 0.0
    w[1, :group_size] = 0.75
    w[2, 5] = 3.0
    return w


def _layer(q, isa):
    lib = native.load(isa)
    if lib is None:
        pytest.skip(f"{isa} kernel unavailable: {native.load_error(isa)}")
    layer = TorchQLinear(q, backend="native")
    layer._lib, layer._fn = lib, lib.fmoe_qmv
    return layer


@pytest.mark.skipif(native.load() is None, reason=f"native kernel unavailable: {native.load_error()}")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", ("1", "2"))
def test_long_2bit_rows_in_quads_equal_single_rows(isa, threads, monkeypatch):
    monkeypatch.setenv("FMOE_THREADS", threads)
    rng = np.random.default_rng(91)
    # 1152: 18 groups (a partial 8-group step); 71 rows: 64-row chunks, then a quad, a pair and a single row
    for inp, out, scale_dtype in ((1152, 7, "bfloat16"), (2048, 71, "float32"), (4096, 9, "bfloat16")):
        q = quantize(_weights(rng, out, inp, 64), 2, 64, scale_dtype)
        x = torch.randn(1, inp)
        full = _layer(q, isa)._native(x, mode=0)
        single = torch.cat([
            _layer(QuantizedWeight(q.weight[n : n + 1], q.scales[n : n + 1], q.biases[n : n + 1], 2, 64),
                   isa)._native(x, mode=0)
            for n in range(out)
        ], dim=1)
        assert torch.equal(full, single), (isa, inp)
        ref = (x @ torch.from_numpy(dequantize(q)).t()).numpy()
        assert float(np.abs(full.numpy() - ref).max() / np.abs(ref).max()) <= 1e-3, (isa, inp)
