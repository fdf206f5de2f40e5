"""Where a model comes from: a user's directory, or the embedded demo model converted once to the streaming layout.

The demo model ships as a Hugging Face bf16 checkpoint inside the package (``fmoe/demo/model``); on first use it is
converted to the 4-bit streaming layout under the user cache directory (``$FMOE_CACHE_DIR`` or ``~/.cache/fmoe``), keyed
by the checkpoint's content hash, so every engine path (quantized kernels, expert streaming) runs on it.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from fmoe.errors import FmoeError

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo" / "model"


def cache_dir() -> Path:
    return Path(os.environ.get("FMOE_CACHE_DIR") or Path.home() / ".cache" / "fmoe")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        p = path / name
        if p.exists():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def demo_variant(bits: int = 4, group_size: int = 64, quiet: bool = False) -> Path:
    """The demo model in the streaming layout at ``bits`` (converted and cached on first use)."""
    if not (DEMO_DIR / "config.json").exists():
        raise FmoeError(f"the embedded demo model is missing ({DEMO_DIR}); pass a model path instead")
    dst = cache_dir() / f"demo-{_digest(DEMO_DIR)}-{bits}bit-g{group_size}"
    if not (dst / "manifest.json").exists():
        from fmoe.engine.convert import convert
        if not quiet:
            print(f"fmoe: converting the demo model to the {bits}-bit streaming layout (once) -> {dst}",
                  file=sys.stderr)
        dst.parent.mkdir(parents=True, exist_ok=True)
        convert(DEMO_DIR, dst, bits=bits, group_size=group_size, progress=not quiet, overwrite=dst.exists())
    return dst


def resolve_model(path: str | Path | None, bits: int = 4, quiet: bool = False) -> Path:
    """``None`` -> the demo model's streaming layout; otherwise the directory given (checked to exist)."""
    if path is None:
        return demo_variant(bits, quiet=quiet)
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FmoeError(f"model directory not found: {p}")
    return p
