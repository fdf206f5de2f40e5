"""Set-up shared by the Triton kernel tests: they run on CUDA where a GPU exists, else in Triton's interpreter on the
CPU when FMOE_TRITON_INTERPRET=1 (slow; CI has torch's CPU wheel and no Triton), else the importing test module is
skipped. Import it before the kernels: the interpreter is chosen when they are decorated.

    from triton_env import CUDA, DEVICE, INTERPRET, torch
"""
import os

import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("FMOE_TRITON_INTERPRET") == "1"
if not CUDA and not INTERPRET:
    pytest.skip("no GPU (set FMOE_TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)",
                allow_module_level=True)
if INTERPRET and not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
DEVICE = "cuda" if CUDA else "cpu"
