"""The GPU kernel modules (Triton; the CUDA C++ mat-vec built by NVRTC), imported once each, or None where they
cannot be imported (no Triton, or a broken one).

    qmv = gpu.kernels("triton_qmv")          # fmoe.kernels.triton_qmv, or None (then callers take the torch path)

A module that fails to import is reported once with a warning that names the slower path taken.
"""
from __future__ import annotations

import importlib
import warnings

_LOADED: dict = {}
_FALLBACK = {
    "cuda_qmv": "the Triton grouped mat-vec runs instead",
    "triton_qmv": "quantized mat-vecs on the GPU dequantize each matrix instead",
    "triton_norm": "RMSNorm runs as torch ops",
    "triton_deltanet": "Gated DeltaNet decode runs as torch ops",
}


def kernels(name: str):
    if name not in _LOADED:
        try:
            _LOADED[name] = importlib.import_module(f"fmoe.kernels.{name}")
        except Exception as e:  # noqa: BLE001 - no Triton (or a broken one): the torch path, said once
            warnings.warn(f"GPU kernels {name} unavailable ({e}); {_FALLBACK.get(name, 'torch ops instead')}")
            _LOADED[name] = None
    return _LOADED[name]
