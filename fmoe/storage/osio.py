"""Portable file I/O the expert store needs, on Linux and macOS (and plain POSIX elsewhere).

    fd = open_uncached(path)          # reads bypass the page cache: O_DIRECT (Linux), F_NOCACHE (macOS), else plain
    uncached_kind()                   # "O_DIRECT" | "F_NOCACHE" | "none": what open_uncached uses here
    advise_willneed(fd, off, n)       # kernel read-ahead hint: posix_fadvise(WILLNEED) or F_RDADVISE; False if none
    drop_from_page_cache(path)        # posix_fadvise(DONTNEED) of a whole file; False where it does not exist
    drops()                           # how many files this process has evicted so far (stores re-check residency)
    resident_bytes(fd, off, n)        # bytes of [off, off+n) of a file already in the page cache (mincore), or None

Each checks what the running OS offers when called (``os.O_DIRECT`` and ``os.posix_fadvise`` do not exist on macOS)
and never raises AttributeError.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import struct
import sys

import numpy as np

_F_NOCACHE = 48          # <sys/fcntl.h> on Darwin
_F_RDADVISE = 44


def uncached_kind() -> str:
    if hasattr(os, "O_DIRECT"):
        return "O_DIRECT"
    if sys.platform == "darwin":
        return "F_NOCACHE"
    return "none"


def open_uncached(path) -> int:
    """A read-only fd whose reads bypass the page cache where the OS allows it (O_DIRECT needs aligned buffers,
    offsets and sizes: the streaming layout's records are 4 KiB aligned)."""
    kind = uncached_kind()
    if kind == "O_DIRECT":
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    fd = os.open(path, os.O_RDONLY)
    if kind == "F_NOCACHE":
        import fcntl
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_NOCACHE", _F_NOCACHE), 1)
        except OSError:
            pass         # still correct: reads go through the cache
    return fd


def advise_willneed(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start reading [offset, offset + length); False when the OS has no such hint."""
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is not None and hasattr(os, "POSIX_FADV_WILLNEED"):
        fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        return True
    if sys.platform == "darwin":
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_RDADVISE", _F_RDADVISE), struct.pack("qi4x", offset, length))
        return True
    return False


_drops = 0


def drops() -> int:
    """How many times this process has evicted a file (drop_from_page_cache): what an expert store found resident
    before a change of this count it asks about again (expert_store.RESIDENT_RECHECK_S)."""
    return _drops


def drop_from_page_cache(path) -> bool:
    """Evict a file's pages from the page cache (benchmarks: a cold start); False where the OS cannot."""
    global _drops
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is None or not hasattr(os, "POSIX_FADV_DONTNEED"):
        return False
    _drops += 1
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.fsync(fd)            # dirty pages (a file just written) cannot be dropped
        except OSError:
            pass
        fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


_libc = None
_PAGE = mmap.PAGESIZE


def _load_libc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            lib.mmap.restype = ctypes.c_void_p
            lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                 ctypes.c_longlong]
            lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc


def pages_resident(addr: int, length: int, samples: int = 16) -> bool | None:
    """Whether ``samples`` pages spread over [addr, addr + length) of an existing file mapping are all in the page
    cache (``mincore`` of one page each: about 1 us, where a whole 7 MB expert costs ~150 us), or None where that
    cannot be asked. A sample, not a proof: a page missed between samples is read by the page fault that touches it."""
    lib = _load_libc()
    if not lib or length <= 0:
        return None
    first = addr - addr % _PAGE
    last = (addr + length - 1) - (addr + length - 1) % _PAGE
    n = (last - first) // _PAGE
    vec = ctypes.create_string_buffer(1)
    for i in range(samples):
        page = first + (n * i // max(1, samples - 1)) * _PAGE
        if lib.mincore(page, _PAGE, vec) != 0:
            return None
        if not vec.raw[0] & 1:
            return False
    return True


def resident_bytes(fd: int, offset: int, length: int) -> int | None:
    """How many bytes of [offset, offset + length) of ``fd``'s file are in the page cache now (``mincore`` over a
    temporary read-only mapping; touches no page), or None where that cannot be asked."""
    lib = _load_libc()
    if not lib or length <= 0:
        return None if not lib else 0
    start = offset - offset % _PAGE
    span = offset + length - start
    addr = lib.mmap(None, span, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if addr in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        npages = (span + _PAGE - 1) // _PAGE
        vec = ctypes.create_string_buffer(npages)
        if lib.mincore(addr, span, vec) != 0:
            return None
        raw = vec.raw
        res = int(np.count_nonzero(np.frombuffer(raw, np.uint8) & 1))
        if not res:
            return 0
        # bytes, not pages: the first and last page may be partly outside the range
        n = res * _PAGE
        if raw[0] & 1:
            n -= offset - start
        last_pad = npages * _PAGE - span
        if raw[-1] & 1:
            n -= last_pad
        return max(0, min(length, n))
    finally:
        lib.munmap(addr, span)
