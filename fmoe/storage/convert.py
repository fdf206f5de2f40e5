"""``fmoe convert SRC DST``: a Hugging Face bf16 or mlx-lm checkpoint -> the streaming layout.

* From bf16/fp32: experts and the big non-expert linears are quantized (affine, group-wise, bit-identical to
  ``mx.quantize``) at ``--bits`` (default 4); the router ``mlp.gate`` and ``mlp.shared_expert_gate`` at 8 bits (as
  mlx-community's 397B); norms, conv1d, ``A_log``, ``dt_bias`` stay unquantized.  A linear whose input size is not a
  multiple of the group size stays dense (experts must quantize: pick another ``--group-size``).
* From mlx-lm files: repacked without changing bits; experts are requantized when ``--bits``/``--group-size`` differ
  (dequantize then quantize).  Quantized non-expert linears are kept as they are.
* From a streaming layout: the same (repack or requantize).

Free-space check before writing; everything goes to ``DST.tmp-XXXX`` renamed to ``DST`` at the end, so an
interrupted convert never leaves something that loads.

    fmoe convert SRC DST [--bits 2|3|4|8] [--group-size 32|64|128] [--force] [--threads N] [--verify]
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fmoe.storage.progress import byte_progress
from fmoe.storage.stream_layout import (StreamingWriter, directory_bytes, free_space_check, is_streaming_layout,
                                       remove_stale_temps, verify_layout)
from fmoe.errors import LayoutError
from fmoe.kernels.quant import QuantizedWeight, dequantize, quantize

ROUTER_BITS = 8
_DENSE_SUFFIXES = (".weight", "A_log", "dt_bias")


def is_linear_name(name: str) -> bool:
    """Canonical linears carry no suffix (``embed_tokens.weight`` is the embedding, quantized like a linear)."""
    return name == "embed_tokens.weight" or not name.endswith(_DENSE_SUFFIXES)


def is_router_name(name: str) -> bool:
    return name.endswith((".mlp.gate", ".mlp.shared_expert_gate"))


def _requant(q: QuantizedWeight, bits: int, gs: int) -> QuantizedWeight:
    return quantize(dequantize(q), bits, gs)


def convert_non_expert(name: str, x, bits: int, gs: int):
    """What the layout stores for one non-expert weight (see the module docstring)."""
    if isinstance(x, QuantizedWeight):
        return x                                            # mlx-quantized: kept as is
    x = np.asarray(x)
    if not is_linear_name(name) or x.ndim != 2:
        return x.astype(np.float32, copy=False) if x.dtype.kind == "f" else x
    b = ROUTER_BITS if is_router_name(name) else bits
    if x.shape[1] % gs:
        return x.astype(np.float32, copy=False)             # cannot group: stays dense (small, unusual shapes)
    return quantize(np.ascontiguousarray(x, dtype=np.float32), b, gs)


def convert_expert_linear(x, bits: int | None, gs: int | None, where: str) -> QuantizedWeight:
    if isinstance(x, QuantizedWeight):
        if (bits is None or x.bits == bits) and (gs is None or x.group_size == gs):
            return x
        return _requant(x, bits or x.bits, gs or x.group_size)
    x = np.ascontiguousarray(x, dtype=np.float32)
    b, g = bits or 4, gs or 64
    if x.shape[1] % g:
        raise LayoutError(f"{where}: input size {x.shape[1]} is not a multiple of group size {g}; "
                          f"use --group-size 32")
    return quantize(x, b, g)


def _text_cfg_dict(mc) -> dict:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "vocab_size", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
            "linear_value_head_dim", "linear_conv_kernel_dim", "num_experts", "num_experts_per_tok",
            "moe_intermediate_size", "shared_expert_intermediate_size", "layer_types")
    return {k: getattr(mc, k) for k in keys}


def estimate_output_bytes(mc, bits: int, gs: int) -> int:
    from fmoe.storage.synth import estimate_bytes
    ex, ne = estimate_bytes(_text_cfg_dict(mc), bits, gs)
    return ex + ne


def _output_config(raw: dict, bits: int, gs: int, quantized_from_float: bool, requantized: bool) -> dict:
    """The source config with a ``quantization`` block describing the output (per-tensor bits: the manifest)."""
    cfg = dict(raw)
    cfg.pop("quantization_config", None)
    q = dict(cfg.get("quantization") or {})
    if quantized_from_float or not q:
        q = {"group_size": gs, "bits": bits, "mode": "affine"}
    elif requantized:
        q.update(group_size=gs, bits=bits)
    cfg["quantization"] = q
    return cfg


def convert(src: str | Path, dst: str | Path, bits: int | None = None, group_size: int | None = None,
            overwrite: bool = False, progress: bool = True, threads: int | None = None, fsync: bool = True,
            verify: bool = False) -> Path:
    """Convert ``src`` to a streaming layout at ``dst``; returns ``dst``.  ``verify`` reads the result back and checks
    every expert and non-expert checksum the manifest records."""
    from fmoe.storage.checkpoint import open_checkpoint
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.exists() and not overwrite:
        raise LayoutError(f"{dst} already exists (use --force to replace it)")
    if dst.resolve() == src.resolve():
        raise LayoutError("SRC and DST are the same directory")
    checkpoint = open_checkpoint(src)
    mc = checkpoint.config
    L, E = mc.num_hidden_layers, mc.num_experts
    g0, _, _ = checkpoint.expert(0, 0)
    src_quant = isinstance(g0, QuantizedWeight)
    out_bits = bits or (g0.bits if src_quant else 4)
    out_gs = group_size or (g0.group_size if src_quant else 64)
    from fmoe.kernels.quant import check_bits_group
    check_bits_group(out_bits, out_gs)
    exp_bits = bits if bits is not None else (None if src_quant else 4)
    exp_gs = group_size if group_size is not None else (None if src_quant else 64)
    need = estimate_output_bytes(mc, out_bits, out_gs)
    remove_stale_temps(dst)                   # what an earlier killed convert left: never resumed, removed
    try:
        free_space_check(dst, need)
    except LayoutError:
        # --force: the old DST is normally kept until the new one is complete (both on disk at once); when only
        # removing it first makes room, do that (counting the space --force frees) instead of refusing
        if not (overwrite and dst.is_dir()):
            raise
        free_space_check(dst, max(0, need - directory_bytes(dst)))
        if progress:
            print(f"fmoe convert: not enough free space to keep {dst} until the new one is complete: removing it "
                  f"first (--force)", file=sys.stderr)
        import shutil
        shutil.rmtree(dst)
    names = checkpoint.non_expert_names()
    cfg = _output_config(mc.raw, out_bits, out_gs, quantized_from_float=not src_quant,
                         requantized=bits is not None or group_size is not None)
    nthreads = max(1, threads or os.cpu_count() or 1)
    t0 = time.perf_counter()
    meta = {"created_by": "fmoe convert", "source": str(src.resolve()),
            "source_kind": "streaming" if is_streaming_layout(src) else ("quantized" if src_quant else "float")}
    with byte_progress(progress) as prog, ThreadPoolExecutor(nthreads, thread_name_prefix="fmoe-convert") as pool, \
            StreamingWriter(dst, cfg, overwrite=overwrite, fsync=fsync, tokenizer_dir=src, metadata=meta) as w:
        task = prog.add_task(f"convert -> {dst.name}", total=need) if prog else None
        last = 0

        def tick():
            nonlocal last
            if prog:
                prog.update(task, advance=w.bytes_written - last)
                last = w.bytes_written

        for name in names:
            w.add_non_expert(name, convert_non_expert(name, checkpoint.load(name), out_bits, out_gs))
            tick()

        def one(layer: int, e: int):
            where = f"layer {layer} expert {e}"
            return tuple(convert_expert_linear(x, exp_bits, exp_gs, f"{where} {p}")
                         for x, p in zip(checkpoint.expert(layer, e), ("gate_proj", "up_proj", "down_proj")))

        pending: deque = deque()
        jobs = ((layer, e) for layer in range(L) for e in range(E))
        for job in jobs:
            pending.append((job, pool.submit(one, *job)))
            if len(pending) >= 2 * nthreads:
                (layer, e), fut = pending.popleft()
                w.add_expert(layer, e, *fut.result())
                tick()
        while pending:
            (layer, e), fut = pending.popleft()
            w.add_expert(layer, e, *fut.result())
            tick()
        out = w.finish()
    if hasattr(checkpoint, "close"):
        checkpoint.close()
    if verify:
        counts = verify_layout(out)
        if progress:
            print(f"verified {out}: {counts['experts']} experts and {counts['non_expert_tensors']} non-expert tensors "
                  f"match the manifest's checksums", file=sys.stderr)
    if progress:
        dt = time.perf_counter() - t0
        print(f"wrote {out}: {L} layers x {E} experts, {out_bits}-bit group {out_gs}, in {dt:.1f} s",
              file=sys.stderr)
    return out
