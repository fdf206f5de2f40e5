"""The model options every command shares, declared once: which model, on which backend/device/dtype, how many
experts per token, and how a streamed model reads its experts.

    p = argparse.ArgumentParser()
    add_model_options(p)                     # --model --backend --device --dtype --experts-per-token
                                             # --memory-budget --io-mode --verify --prediction
    args = p.parse_args()
    options = model_options(args)            # fmoe.engine.loader.ModelOptions
    options = model_options(args, task)      # a task file's model settings fill what the command line leaves unset
"""
from __future__ import annotations

import argparse

from fmoe.engine.loader import ModelOptions
from fmoe.errors import FmoeError


def parse_size(text: str) -> int:
    """'2GB' -> 2_000_000_000 (KB/MB/GB/TB x1000, KiB/MiB/GiB/TiB and K/M/G/T x1024), as an FmoeError if invalid."""
    from fmoe.units import parse_size as parse

    try:
        return parse(text)
    except ValueError as e:
        raise FmoeError(f"invalid size: {e}") from None


def add_model_options(p: argparse.ArgumentParser, *, model_help: str = "default: the embedded demo model",
                      experts: bool = True) -> None:
    """The shared options; every default is None so that a task file's settings can fill them."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help=f"model directory: HF, mlx-lm or fmoe streaming layout ({model_help})")
    g.add_argument("--backend", default=None, help="array backend: torch (default) or mlx")
    g.add_argument("--device", default=None, help="torch device: cpu (default) or cuda")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default float32)")
    if experts:
        g.add_argument("--experts-per-token", type=int, default=None,
                       help="active experts per token (default: the model's config)")
    g.add_argument("--memory-budget", default=None, help="expert cache budget of a streamed model, e.g. 2GB")
    g.add_argument("--gpu-memory-budget", default=None,
                   help="with --device cuda: VRAM for quantized experts, e.g. 24GB (default: the free VRAM once the "
                        "other weights are loaded, less 2 GiB; when every expert fits they are all loaded and decode "
                        "replays CUDA graphs)")
    g.add_argument("--io-mode", default=None, choices=["page-cache", "direct"],
                   help="how a streamed model reads experts (default page-cache)")
    g.add_argument("--verify", action="store_true", help="verify expert checksums on every read")
    g.add_argument("--prediction", default=None, choices=["on", "off", "auto"],
                   help="prefetch the experts the next router is likely to pick (default auto: while experts are "
                        "read from the disk)")


def model_options(args: argparse.Namespace, task=None) -> ModelOptions:
    """ModelOptions from the parsed options; a task file (fmoe.agent.taskfile.TaskFile) fills the unset ones."""
    base = ModelOptions()
    # `is not None`, not `or`: 0 is a value (--experts-per-token 0 reaches the range check and is refused;
    # --memory-budget 0 keeps no expert cache, in either io mode) and must not fall back to the task file or default
    epk = getattr(args, "experts_per_token", None)
    budget = parse_size(args.memory_budget) if args.memory_budget is not None else None
    gpu_budget = getattr(args, "gpu_memory_budget", None)
    return ModelOptions(
        backend=args.backend or (task.backend if task is not None else base.backend),
        dtype=args.dtype or base.dtype,
        device=args.device,
        experts_per_token=epk if epk is not None else (task.experts_per_token if task is not None else None),
        memory_budget=budget if budget is not None else (task.memory_budget if task is not None else None),
        io_mode=args.io_mode or base.io_mode,
        verify=bool(args.verify),
        prediction={"on": True, "off": False}.get(args.prediction or "auto", "auto"),
        gpu_memory_budget=parse_size(gpu_budget) if gpu_budget is not None else None,
    )
