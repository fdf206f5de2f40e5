"""Where fmoe keeps files of its own: one cache-directory rule for kernels, converted models and benchmarks.

    cache_dir()                 # $FMOE_CACHE_DIR, else $XDG_CACHE_HOME/fmoe, else ~/.cache/fmoe
    cache_dir("kernels")        # a subfolder of it (not created)
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    base = os.environ.get("FMOE_CACHE_DIR")
    if base:
        root = Path(base)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fmoe"
    return root.joinpath(*parts)
