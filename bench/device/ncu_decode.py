"""One decode-size call of each GPU mat-vec (10 rows of 1024 x 4096 at 4 bits: the tensor-core default, the FMA
kernel) and the read-only peer of the same bytes, for Nsight Compute: where the time of a 20 MB call goes.

    ncu --kernel-name regex:fmoe --section SpeedOfLight ... python3 bench/device/ncu_decode.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from fmoe.bench import cuda_kernels  # noqa: E402
from fmoe.kernels import cuda_qmv  # noqa: E402

(w, s, b), = cuda_kernels._tables(4, 1024, 4096, 40, 64, 1)
x = torch.randn(1, 4096, device="cuda").to(torch.bfloat16)
slots = torch.arange(10, dtype=torch.int32, device="cuda") * 4
for kernel in (None, "fma", None, "fma"):                      # the second pair is the one to read (warm caches)
    cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, 64, kernel=kernel)
cuda_kernels.measure_read(10 * 1024 * (2048 + 256))
torch.cuda.synchronize()
