"""fmoe: stream Mixture-of-Experts models from SSD; grammar-constrained tool-calling agents."""
import os as _os

# torch's OpenMP runtime and the native kernels' (fmoe/kernels/qmv.cpp) each keep a thread pool; with the default
# active wait policy their idle threads spin against each other on a 2-core machine and every op slows down by 10x
# or more (measured: demo-model prefill 16.1 s -> 1.2 s, decode 2.2 -> 16.7 tok/s). Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
