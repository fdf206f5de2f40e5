"""Build (once, cached) and load the native kernels through ctypes: the quantized mat-vec ``qmv.cpp`` (:func:`load`)
and the logits bitmask ``logits_mask.cpp`` (:func:`load_mask`, the grammar's per-step host cost).

Each source is compiled once per instruction-set variant with explicit flags (not ``-march=native``), and the best
variant the CPU supports is loaded (runtime dispatch from the CPU's flags, ``/proc/cpuinfo``):

* ``avx512``: ``-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni`` (x86 with AVX-512 + VNNI);
* ``avx2``: ``-mavx2 -mfma -mf16c`` (x86-64-v3);
* ``generic``: no ISA flags: portable C++ (SSE2 auto-vectorization on x86-64, NEON on aarch64, where it is the
  baseline; there is no hand-written NEON kernel).

``FMOE_ISA=avx2|avx512|generic`` forces a variant (one the CPU lacks is refused with a warning).  Libraries go to
``$FMOE_CACHE_DIR/kernels`` (default ``$XDG_CACHE_HOME/fmoe/kernels`` or ``~/.cache/fmoe/kernels``), keyed by a hash
of the source, compiler, flags and architecture, so each builds once per machine and later imports only ``dlopen``
it.  No torch headers and no ninja are needed.  A variant that fails to build prints a warning naming the slower
variant taken; if none builds (or no compiler is found), :func:`load` / :func:`load_mask` return ``None`` (with a
warning) and callers fall back to the pure torch path.  ``FMOE_NATIVE=0`` disables the native kernels (silently).

Threads: :func:`threads` = ``$FMOE_THREADS``, else the physical cores this process may run on (hyperthreads not
counted).
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
import warnings
from pathlib import Path

from fmoe.paths import cache_dir as fmoe_cache_dir

_SRC = Path(__file__).with_name("qmv.cpp")
_MASK_SRC = Path(__file__).with_name("logits_mask.cpp")
_BASE_FLAGS = ["-O2", "-pthread", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno", "-ffp-contract=off"]
ISA_FLAGS = {
    "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "generic": [],
}
# /proc/cpuinfo flags each variant needs
_ISA_NEEDS = {
    "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
    "avx2": {"avx2", "fma", "f16c"},
    "generic": set(),
}
ISAS = ("avx512", "avx2", "generic")  # best first
_lock = threading.Lock()


def cache_dir() -> Path:
    return fmoe_cache_dir("kernels")


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _cpuinfo_line(prefixes=("flags", "Features")) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(prefixes):
                    return line.strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it does not exist, e.g. macOS)."""
    line = _cpuinfo_line()
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def cpu_name() -> str:
    line = _cpuinfo_line(("model name", "Hardware", "CPU part"))
    return line.split(":", 1)[1].strip() if ":" in line else (platform.processor() or platform.machine())


def supported_isas(flags: set[str] | None = None, machine: str | None = None) -> list[str]:
    """Variants this CPU can run, best first (``generic`` always)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return ["generic"]
    flags = cpu_flags() if flags is None else flags
    return [isa for isa in ISAS if _ISA_NEEDS[isa] <= flags]


def _wanted_isas() -> list[str]:
    """Variants to try, in order: $FMOE_ISA (if the CPU supports it) then the supported ones, best first."""
    ok = supported_isas()
    forced = os.environ.get("FMOE_ISA", "").strip().lower()
    if forced:
        if forced in ok:
            return ok[ok.index(forced):]
        warnings.warn(f"FMOE_ISA={forced!r}: not one this CPU runs ({', '.join(ok)}); using {ok[0]}",
                      RuntimeWarning, stacklevel=3)
    return ok


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def threads() -> int:
    """Threads of the native kernels: ``$FMOE_THREADS``, else the physical cores (see :func:`physical_cores`).

    Read on every call (a changed ``$FMOE_THREADS`` applies to the next kernel call).  Each mat-vec asks, so the
    common case is cheap: the raw environment entry is looked up in ``os.environ``'s own dict and, while it is the
    same object as last time, the parsed value is reused (``os.environ.get`` alone took ~1 us, a tenth of a small
    mat-vec call's Python overhead)."""
    global _threads_memo
    data = getattr(os.environ, "_data", None) if _THREADS_KEY is not None else None
    if data is not None:
        raw = data.get(_THREADS_KEY)
        memo = _threads_memo
        if memo is not None and memo[0] is raw:
            return memo[1]
        n = _threads_from_env()
        _threads_memo = (raw, n)  # only after a good parse: a bad value raises on every call, as before
        return n
    return _threads_from_env()


def _threads_from_env() -> int:
    env = os.environ.get("FMOE_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            from fmoe.errors import ConfigError
            raise ConfigError(f"FMOE_THREADS must be a whole number of threads, got {env!r}") from None
    global _threads
    if _threads is None:
        _threads = physical_cores()
    return _threads


_threads: int | None = None
# threads()'s fast path: os.environ's key for FMOE_THREADS (None where os.environ is not the usual mapping) and the
# last (raw entry, result) pair
try:
    _THREADS_KEY = os.environ.encodekey("FMOE_THREADS")  # type: ignore[attr-defined]
except Exception:  # noqa: BLE001 -- no encodekey: always the plain os.environ.get path
    _THREADS_KEY = None
_threads_memo: tuple | None = None


def build(verbose: bool = False, source: Path = _SRC, isa: str | None = None) -> Path:
    """Compile ``source`` (default ``qmv.cpp``) for ``isa`` (default: the best this CPU runs) if not cached, and
    return the path of the shared library.  Building a variant the CPU cannot run is allowed (compile tests)."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX)")
    isa = isa or supported_isas()[0]
    src = source.read_bytes()
    flags = _BASE_FLAGS + ISA_FLAGS[isa] + os.environ.get("FMOE_QMV_CFLAGS", "").split()  # extra: experiments
    key = hashlib.sha256(
        b"\0".join([src, cxx.encode(), " ".join(flags).encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / f"fmoe_{source.stem}_{isa}_{key}.so"
    if so.exists():
        return so
    fd, tmp = tempfile.mkstemp(prefix=so.stem + ".", suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    parts = build_parts() if source == _SRC and isa != "generic" else 1
    try:
        cmds = _compile(cxx, flags, source, tmp, parts)
    except RuntimeError as e:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {source.name} ({isa}) failed:\n{e}") from None
    if verbose:
        print("\n".join(" ".join(c) for c in cmds), file=sys.stderr)
    os.replace(tmp, so)  # atomic: concurrent builders race harmlessly
    return so


def build_parts() -> int:
    """Objects a SIMD variant of ``qmv.cpp`` is compiled as, in parallel (see "Parts" in qmv.cpp): one per CPU this
    process may use, at most 3. Measured on the 2-core EPYC (AVX2 variant): the whole file 36.4 s; 2 parts 18.1 and
    21.3 s each, 20.0 s of wall time; 3 parts 9.8-13.7 s each (24.0 s of wall time on 2 cores); 6 parts 4.5-14.0 s
    (the 3-bit instances alone are 14 s, so more than 3 parts gains little). ``$FMOE_BUILD_PARTS`` overrides (1-6)."""
    env = os.environ.get("FMOE_BUILD_PARTS", "").strip()
    if env:
        if not env.isdigit() or not 1 <= int(env) <= 6:
            from fmoe.errors import ConfigError

            raise ConfigError(f"FMOE_BUILD_PARTS must be a whole number from 1 to 6, got {env!r}")
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(3, cpus))


def _compile(cxx: str, flags: list[str], source: Path, out: str, parts: int) -> list[list[str]]:
    """Build ``source`` into the shared library ``out``: one compiler call, or ``parts`` objects compiled at once
    and linked. Returns the commands; raises RuntimeError with the failing command's error output."""
    if parts <= 1:
        cmds = [[cxx, *flags, str(source), "-o", out]]
        res = subprocess.run(cmds[0], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmds[0])}\n{res.stderr[-4000:]}")
        return cmds
    with tempfile.TemporaryDirectory(dir=Path(out).parent) as d:
        obj_flags = [f for f in flags if f != "-shared"]
        objs = [os.path.join(d, f"part{i}.o") for i in range(parts)]
        cmds = [[cxx, *obj_flags, f"-DFMOE_PARTS={parts}", f"-DFMOE_PART={i}", "-c", str(source), "-o", o]
                for i, o in enumerate(objs)]
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
        stderrs = [p.communicate()[1] for p in procs]          # wait for all before reporting the first failure
        for cmd, proc, err in zip(cmds, procs, stderrs):
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}\n{err[-4000:]}")
        link = [cxx, "-shared", "-pthread", *objs, "-o", out]
        res = subprocess.run(link, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(link)}\n{res.stderr[-4000:]}")
        return cmds + [link]


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
        "fmoe_qmv_isa": (ctypes.c_char_p, []),
        "fmoe_delta_step": (_I, [_P, _P, _P, _P, _P,   # q, k, v, g, beta
                                 _P, _P, _P,           # S, S_out, o
                                 _I, _I, _I, _I, _I]),  # H, Hk, dk, dv, nthreads
        "fmoe_gdn_step": (_I, [_P, _P, _P, _P,         # qkv, z, b, a
                               _P, _P, _P,             # conv (or NULL), conv_out, conv taps [K, C]
                               _P, _P,                 # S (or NULL), S_out
                               _P, _P, _P, ctypes.c_float,  # neg_A, dt_bias, norm weight, eps
                               _P,                     # y
                               _I, _I, _I, _I, _I, _I]),  # Hk, Hv, dk, dv, K, nthreads
        "fmoe_rms_norm": (_I, [_P, _I64, _P, _P,       # x, x_stride, w, y
                               _I64, _I64, ctypes.c_float]),  # rows, n, eps
        "fmoe_read_bytes": (_I, [_P, _I64, _I, _P]),    # p, nbytes, nthreads, out (uint64 XOR of the words)
        "fmoe_moe_fused": (_I, [_P, _P, _P, _I, _I64,  # ptrs (9 per expert), inter[E], weights[E], E, H
                                _I, _I, _I,            # scales_bf16, bits, group_size
                                _P, _P, _I, _I, _I]),  # x, y, accumulate, nthreads, mode
    },
    _MASK_SRC: {
        "fmoe_mask_logits_f32": (_I64, [_P, _I64, _P, _I64]),                       # logits, n, words, nwords
        "fmoe_mask_select_f32": (_I64, [_P, _P, _I64, _P, _I64, _P, _P, _I64]),     # .., dirty, ndirty, max_allowed
        "fmoe_mask_apply_f32": (_I64, [_P, _P, _I64, _P, _I64, _P, _P, _I64]),
    },
}
_loaded: dict[tuple[Path, str | None], tuple[ctypes.CDLL | None, str | None, str | None]] = {}


def _dlopen(source: Path, isa: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build(source=source, isa=isa)))
    for name, (res, args) in _SIGNATURES[source].items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib


def _load(source: Path, isa: str | None = None) -> tuple[ctypes.CDLL | None, str | None, str | None]:
    """(library, isa, None) or (None, None, why), cached per (source, isa).  ``isa=None``: the best variant that
    builds, with a warning for each one that fails; a given ``isa``: that variant or the error."""
    hit = _loaded.get((source, isa))
    if hit is not None:
        return hit
    with _lock:
        if (source, isa) not in _loaded:
            if os.environ.get("FMOE_NATIVE", "1") in ("0", "false", "no", "off"):
                _loaded[(source, isa)] = (None, None, "RuntimeError: disabled by FMOE_NATIVE=0")
                return _loaded[(source, isa)]
            tries = [isa] if isa else _wanted_isas()
            errors = []
            for i, v in enumerate(tries):
                try:
                    _loaded[(source, isa)] = (_dlopen(source, v), v, None)
                    break
                except Exception as e:  # noqa: BLE001 -- any failure means "use the next, slower path"
                    errors.append(f"{v}: {type(e).__name__}: {e}")
                    if isa is None:
                        nxt = tries[i + 1] if i + 1 < len(tries) else None
                        slower = (f"using the slower {nxt} variant" if nxt else
                                  "using the pure torch path (much slower)")
                        warnings.warn(f"fmoe: the {v} build of {source.name} failed ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0]}); {slower}", RuntimeWarning, stacklevel=3)
            else:
                _loaded[(source, isa)] = (None, None, "; ".join(errors))
    return _loaded[(source, isa)]


def load(isa: str | None = None) -> ctypes.CDLL | None:
    """The quantized mat-vec library (the best variant this CPU runs, or ``isa``), or None when unavailable (see
    :func:`load_error`)."""
    return _load(_SRC, isa)[0]


def load_error(isa: str | None = None) -> str | None:
    return _load(_SRC, isa)[2]


def kernel_isa() -> str:
    """The variant the quantized mat-vec runs: "avx512vnni", "avx2", "generic" / "generic-neon", or "torch" when
    the native kernel is unavailable."""
    lib = load()
    return lib.fmoe_qmv_isa().decode() if lib is not None else "torch"


def load_mask() -> ctypes.CDLL | None:
    """The logits-mask library (``fmoe_mask_apply_f32`` and its parts), or None (see :func:`load_mask_error`)."""
    return _load(_MASK_SRC)[0]


def load_mask_error() -> str | None:
    return _load(_MASK_SRC)[2]


def has_simd() -> bool:
    lib = load()
    return bool(lib is not None and lib.fmoe_qmv_has_simd())
