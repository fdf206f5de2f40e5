"""Decode-size calls of the bulk-copy kernel for Nsight Compute (where its products' time goes: shared-memory bank
conflicts, stall reasons): 10 rows of 1024 x 4096 (one matrix), gate+up, and 4096 x 1024, each launched twice (the
second is the one to read).

    ncu --kernel-name regex:fmoe_qmv4_bulk --section ... python3 bench/device/ncu_bulk.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from fmoe.bench import cuda_kernels  # noqa: E402
from fmoe.kernels import cuda_qmv  # noqa: E402

(w, s, b), (wu, su, bu) = cuda_kernels._tables(4, 1024, 4096, 40, 64, 2)
(wd, sd, bd), = cuda_kernels._tables(4, 4096, 1024, 40, 64, 1)
x = torch.randn(1, 4096, device="cuda").to(torch.bfloat16)
h = torch.randn(10, 1024, device="cuda")
slots = torch.arange(10, dtype=torch.int32, device="cuda") * 4
for _ in range(2):
    cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, kernel="bulk")
    cuda_qmv.grouped_gate_up(x, w, s, b, wu, su, bu, slots, 4, 64, kernel="bulk")
    cuda_qmv.grouped_qmv(h, wd, sd, bd, slots, 4, 64, kernel="bulk")
torch.cuda.synchronize()
