"""Where the tensor-core mat-vec (fmoe_qmv4_mma) puts each input and output, when its parity test fails: one launch
with 512 rows, row k's x = e_k (so y[k] should be column k of the dequantized matrix), and the column each y[k]
actually matches; then the row mapping with x = ones.

    python3 bench/device/mma_diag.py [--n-in 512] [--group 64]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fmoe.kernels import cuda_qmv  # noqa: E402
from fmoe.kernels.quant import dequantize, quantize  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-in", type=int, default=512)
    ap.add_argument("--group", type=int, default=64)
    a = ap.parse_args()
    n_out, n_in = 32, a.n_in
    q = quantize(np.random.default_rng(0).standard_normal((n_out, n_in)).astype(np.float32), 4, a.group)
    dense = dequantize(q)
    w = torch.from_numpy(q.weight.view(np.int32)[None]).cuda()
    s = torch.from_numpy(np.ascontiguousarray(q.scales).view(np.int16)).view(torch.bfloat16)[None].cuda()
    b = torch.from_numpy(np.ascontiguousarray(q.biases).view(np.int16)).view(torch.bfloat16)[None].cuda()
    x = torch.eye(n_in, device="cuda")
    slots = torch.zeros(n_in, dtype=torch.int32, device="cuda")
    y = cuda_qmv.grouped_qmv(x, w, s, b, slots, 4, a.group).cpu().numpy()          # [n_in, n_out]
    ref = dense.T                                                                   # [n_in, n_out]
    bad = np.where(np.abs(y - ref).max(axis=1) > 1e-3 * np.abs(ref).max())[0]
    print(f"inputs whose column is wrong: {len(bad)} of {n_in}")
    for k in bad[:24]:
        d = np.abs(ref - y[k][None]).max(axis=1)
        err = np.abs(y[k] - ref[k]).max()
        print(f"  x=e_{k}: matches column {int(d.argmin())} (err {d.min():.3g}); own column err {err:.3g}")
    y1 = cuda_qmv.grouped_qmv(torch.ones(1, n_in, device="cuda"), w, s, b, slots[:1], 4, a.group).cpu().numpy()[0]
    r1 = dense.sum(axis=1)
    print("rows with x=1: kernel", np.round(y1[:16], 3).tolist(), "\n               ref", np.round(r1[:16], 3).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
