"""Page-locking host memory that CUDA copies read (``cudaHostRegister``): a registered range is copied to the GPU by
DMA, asynchronously, with no staging copy by the CPU.

    from fmoe.engine import cuda_host
    if cuda_host.read_only_supported(0):
        ok = cuda_host.register(address, nbytes, read_only=True)   # False: left unregistered (nothing else changes)
        ...
        cuda_host.unregister(address)

fmoe/engine/device_experts.py uses it to make the page cache itself the pinned host tier: the read-only mapping of a
layer file wholly in the page cache is registered with ``cudaHostRegisterReadOnly``, and a miss of the VRAM tier is
then one ``cudaMemcpyAsync`` from the file's pages to the expert's slot, instead of a ``pread`` into a pinned buffer
followed by the copy.

The CUDA runtime is the one torch loaded (found in ``/proc/self/maps``), called through ctypes: torch binds
``cudaHostRegister`` but not ``cudaGetLastError``, and a refused registration must not leave its error behind for
the next kernel launch check to report.
"""
from __future__ import annotations

import ctypes
import threading

_HOST_REGISTER_PORTABLE = 0x01
_HOST_REGISTER_READ_ONLY = 0x08
_ATTR_HOST_REGISTER_SUPPORTED = 99
_ATTR_HOST_REGISTER_READ_ONLY_SUPPORTED = 113

_lock = threading.Lock()
_state: dict = {}


def _runtime():
    """The process's libcudart (loaded by torch), or None where there is none."""
    with _lock:
        if "lib" not in _state:
            lib = None
            try:
                with open("/proc/self/maps") as f:
                    paths = sorted({ln.split()[-1] for ln in f if "libcudart.so" in ln})
                if paths:
                    lib = ctypes.CDLL(paths[0])
                    lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
                    lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
                    lib.cudaDeviceGetAttribute.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int]
            except (OSError, AttributeError):
                lib = None
            _state["lib"] = lib
        return _state["lib"]


def _attribute(attr: int, device: int) -> int:
    lib = _runtime()
    if lib is None:
        return 0
    v = ctypes.c_int(0)
    if lib.cudaDeviceGetAttribute(ctypes.byref(v), attr, device) != 0:
        lib.cudaGetLastError()
        return 0
    return v.value


def read_only_supported(device: int = 0) -> bool:
    """Whether ``device`` can register read-only host memory (a file mapping opened without write access)."""
    return bool(_attribute(_ATTR_HOST_REGISTER_SUPPORTED, device)) and bool(
        _attribute(_ATTR_HOST_REGISTER_READ_ONLY_SUPPORTED, device))


def register(address: int, nbytes: int, read_only: bool = True) -> bool:
    """Page-lock [address, address + nbytes) for DMA to every device. False (and no error left pending) when the
    runtime refuses: the caller keeps copying through pinned buffers."""
    lib = _runtime()
    if lib is None:
        return False
    flags = _HOST_REGISTER_PORTABLE | (_HOST_REGISTER_READ_ONLY if read_only else 0)
    if lib.cudaHostRegister(ctypes.c_void_p(address), nbytes, flags) != 0:
        lib.cudaGetLastError()
        return False
    return True


def unregister(address: int) -> None:
    """Undo ``register`` (before the memory is unmapped)."""
    lib = _runtime()
    if lib is not None and lib.cudaHostUnregister(ctypes.c_void_p(address)) != 0:
        lib.cudaGetLastError()
