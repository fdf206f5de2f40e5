"""Quantization (quant.py) and the kernels: the native CPU mat-vec and logits mask (native.py, qmv.cpp,
logits_mask.cpp), torch linears over them (torch_qlinear.py), the GPU grouped mat-vec (triton_qmv.py), the delta rule.
See docs/reference/kernels.md."""
