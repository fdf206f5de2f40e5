"""Build (once, cached) and load the native kernels through ctypes: the quantized mat-vec ``qmv.cpp`` (:func:`load`)
and the logits bitmask ``logits_mask.cpp`` (:func:`load_mask`, the grammar's per-step host cost).

The shared library is compiled with the system C++ compiler (``$CXX`` or ``g++``/``c++``/``clang++``) with
``-O3 -march=native -pthread -ffp-contract=off`` into ``$FMOE_CACHE_DIR/kernels`` (default ``$XDG_CACHE_HOME/fmoe/kernels`` or
``~/.cache/fmoe/kernels``), keyed by a hash of the source, compiler, flags and CPU, so it builds once per machine
(about 2-4 s) and later imports only ``dlopen`` it.  No torch headers and no ninja are needed.

If no compiler is available or the build fails, :func:`load` / :func:`load_mask` return ``None`` and callers fall
back to the pure torch path.  Set ``FMOE_NATIVE=0`` to disable the native kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fmoe.paths import cache_dir as fmoe_cache_dir

_SRC = Path(__file__).with_name("qmv.cpp")
_MASK_SRC = Path(__file__).with_name("logits_mask.cpp")
_FLAGS = ["-O3", "-march=native", "-pthread", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno", "-ffp-contract=off"]
_lock = threading.Lock()


def cache_dir() -> Path:
    return fmoe_cache_dir("kernels")


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(verbose: bool = False, source: Path = _SRC) -> Path:
    """Compile ``source`` (default ``qmv.cpp``; if not cached) and return the path of the shared library."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX)")
    src = source.read_bytes()
    flags = _FLAGS + os.environ.get("FMOE_QMV_CFLAGS", "").split()  # extra flags for experiments
    key = hashlib.sha256(
        b"\0".join([src, cxx.encode(), " ".join(flags).encode(), _cpu_signature().encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / f"fmoe_{source.stem}_{key}.so"
    if so.exists():
        return so
    fd, tmp = tempfile.mkstemp(prefix=so.stem + ".", suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    cmd = [cxx, *flags, str(source), "-o", tmp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and "-march=native" in cmd:  # e.g. compilers without -march=native: portable build
        cmd = [c for c in cmd if c != "-march=native"]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {source.name} failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}")
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    os.replace(tmp, so)  # atomic: concurrent builders race harmlessly
    return so


_I, _I64, _P = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
# source -> {function: (restype, argtypes)}
_SIGNATURES = {
    _SRC: {
        "fmoe_qmv": (_I, [_P, _P, _P, _I,      # w, scales, biases, scales_bf16
                          _P, _P,              # x, y
                          _I64, _I64, _I,      # N, K, M
                          _I64, _I64,          # x_stride, y_stride
                          _I, _I, _I, _I]),    # bits, group_size, nthreads, force_scalar
        "fmoe_dequant": (_I, [_P, _P, _P, _I,  # w, scales, biases, scales_bf16
                              _P, _I64, _I64,  # out, N, K
                              _I, _I, _I]),    # bits, group_size, nthreads
        "fmoe_qmv_has_simd": (_I, []),
    },
    _MASK_SRC: {
        "fmoe_mask_logits_f32": (_I64, [_P, _I64, _P, _I64]),                       # logits, n, words, nwords
        "fmoe_mask_select_f32": (_I64, [_P, _P, _I64, _P, _I64, _P, _P, _I64]),     # .., dirty, ndirty, max_allowed
        "fmoe_mask_apply_f32": (_I64, [_P, _P, _I64, _P, _I64, _P, _P, _I64]),
    },
}
_loaded: dict[Path, tuple[ctypes.CDLL | None, str | None]] = {}


def _load(source: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None) or (None, why): built once, its functions typed from _SIGNATURES; cached per source."""
    hit = _loaded.get(source)
    if hit is not None:
        return hit
    with _lock:
        if source not in _loaded:
            try:
                if os.environ.get("FMOE_NATIVE", "1") in ("0", "false", "no", "off"):
                    raise RuntimeError("disabled by FMOE_NATIVE=0")
                lib = ctypes.CDLL(str(build(source=source)))
                for name, (res, args) in _SIGNATURES[source].items():
                    f = getattr(lib, name)
                    f.restype, f.argtypes = res, args
                _loaded[source] = (lib, None)
            except Exception as e:  # noqa: BLE001 -- any failure means "use the torch fallback"
                _loaded[source] = (None, f"{type(e).__name__}: {e}")
    return _loaded[source]


def load() -> ctypes.CDLL | None:
    """The quantized mat-vec library, or None when unavailable (see :func:`load_error`)."""
    return _load(_SRC)[0]


def load_error() -> str | None:
    return _load(_SRC)[1]


def load_mask() -> ctypes.CDLL | None:
    """The logits-mask library (``fmoe_mask_apply_f32`` and its parts), or None (see :func:`load_mask_error`)."""
    return _load(_MASK_SRC)[0]


def load_mask_error() -> str | None:
    return _load(_MASK_SRC)[1]


def has_simd() -> bool:
    lib = load()
    return bool(lib is not None and lib.fmoe_qmv_has_simd())
