"""CUDA C++ kernels compiled at run time with NVRTC and launched through the CUDA driver API, by ctypes.

    mod = nvrtc.Program(Path("kernel.cu").read_text(), name="kernel")
    fn = mod.function("my_kernel<4, 64>", device_index=0)        # compiled once per machine, then cached on disk
    fn.launch(grid=(gx, gy, 1), block=(128, 1, 1), shared_bytes=s, stream=torch.cuda.current_stream().cuda_stream,
              args=[ctypes_struct_or_scalar, ...])

Why this way: torch's CUDA wheels carry NVRTC (libnvrtc, which torch itself uses) and every machine with an NVIDIA
driver has libcuda, so a kernel builds wherever torch runs on CUDA, with no nvcc, no torch headers and no ninja. The
cubin of each (source, template instance, GPU architecture, NVRTC version) is kept under
``$FMOE_CACHE_DIR/cuda`` (default ``~/.cache/fmoe/cuda``), so later processes only load it (milliseconds).
Kernels run in the primary context of the device, the one torch uses, on whatever stream is passed, so they are
captured by CUDA graphs like torch's own launches.

Errors raise :class:`NvrtcError` with NVRTC's log or the driver's error string; callers (fmoe/kernels/cuda_qmv.py)
turn that into a warning naming the slower path they take.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import sys
import threading
from pathlib import Path

from fmoe.paths import cache_dir


class NvrtcError(RuntimeError):
    pass


_LIBS: dict = {}
_lock = threading.Lock()


def _candidates() -> list[str]:
    """Where libnvrtc may be: the name the loader knows (torch has usually loaded it), torch's nvidia wheels, and
    the CUDA toolkit."""
    names = []
    try:
        import torch

        major = (torch.version.cuda or "").split(".")[0]
        if major:
            names.append(f"libnvrtc.so.{major}")
    except Exception:  # noqa: BLE001 - no torch: the generic names
        pass
    names.append("libnvrtc.so")
    for root in sys.path:
        names += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")), reverse=True)
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    names += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")), reverse=True)
    return names


def _nvrtc():
    if "nvrtc" not in _LIBS:
        errors = []
        for name in _candidates():
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError as e:
                errors.append(str(e))
        else:
            raise NvrtcError("NVRTC (libnvrtc) not found: " + "; ".join(errors[:3]))
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        _LIBS["nvrtc"] = lib
    return _LIBS["nvrtc"]


def _cuda():
    if "cuda" not in _LIBS:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise NvrtcError(f"the CUDA driver (libcuda.so.1) cannot be loaded: {e}") from None
        _LIBS["cuda"] = lib
    return _LIBS["cuda"]


def _check_nvrtc(rc: int, what: str) -> None:
    if rc != 0:
        raise NvrtcError(f"{what}: {_nvrtc().nvrtcGetErrorString(rc).decode()}")


def _check_cu(rc: int, what: str) -> None:
    if rc != 0:
        msg = ctypes.c_char_p()
        _cuda().cuGetErrorString(rc, ctypes.byref(msg))
        raise NvrtcError(f"{what}: CUDA driver error {rc} ({(msg.value or b'?').decode()})")


def nvrtc_version() -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check_nvrtc(_nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return f"{major.value}.{minor.value}"


def compile_cubin(source: str, expression: str, arch: str, options: list[str] = ()) -> tuple[bytes, str]:
    """(cubin, lowered name) of the template instance ``expression`` of ``source`` for ``arch`` ("sm_90")."""
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    _check_nvrtc(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"fmoe_kernel.cu", 0, None, None),
                 "nvrtcCreateProgram")
    try:
        _check_nvrtc(lib.nvrtcAddNameExpression(prog, expression.encode()), "nvrtcAddNameExpression")
        opts = [f"--gpu-architecture={arch}", "-std=c++17", *options]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        if rc != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise NvrtcError(f"NVRTC could not compile {expression} for {arch}:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _check_nvrtc(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check_nvrtc(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        name = ctypes.c_char_p()
        _check_nvrtc(lib.nvrtcGetLoweredName(prog, expression.encode(), ctypes.byref(name)), "nvrtcGetLoweredName")
        return cubin.raw, name.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


class Function:
    """One loaded kernel of one device."""

    def __init__(self, handle: ctypes.c_void_p, name: str):
        self.handle, self.name = handle, name
        static = ctypes.c_int()                          # CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: its __shared__ arrays
        _check_cu(_cuda().cuFuncGetAttribute(ctypes.byref(static), 1, handle), f"{name}: static shared memory")
        self.static_shared = static.value                # bytes of its __shared__ arrays
        self._max_shared = (48 << 10) - static.value     # dynamic bytes a launch may ask for without opting in

    def launch(self, grid, block, shared_bytes: int, stream: int, args, overlap_prior: bool = False) -> None:
        """``args``: ctypes values (a Structure passed by value, c_int, c_void_p, ...), in the kernel's order.
        ``overlap_prior``: programmatic dependent launch (compute capability 9.0+): the kernel may start while the
        stream's previous kernel drains, and must wait for it (griddepcontrol.wait) before reading its outputs."""
        cu = _cuda()
        if shared_bytes > self._max_shared:
            _check_cu(cu.cuFuncSetAttribute(self.handle, 8, ctypes.c_int(shared_bytes)),   # MAX_DYNAMIC_SHARED_SIZE
                      f"{self.name}: {shared_bytes} bytes of shared memory")
            self._max_shared = shared_bytes
        params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        if overlap_prior:
            attr = _LaunchAttribute(_PROGRAMMATIC_STREAM_SERIALIZATION)
            attr.value[0] = 1                            # programmaticStreamSerializationAllowed
            config = _LaunchConfig(*grid, *block, shared_bytes, ctypes.c_void_p(stream), ctypes.pointer(attr), 1)
            _check_cu(cu.cuLaunchKernelEx(ctypes.byref(config), self.handle, params, None), f"launch of {self.name}")
            return
        _check_cu(cu.cuLaunchKernel(self.handle, ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(grid[2]),
                                    ctypes.c_uint(block[0]), ctypes.c_uint(block[1]), ctypes.c_uint(block[2]),
                                    ctypes.c_uint(shared_bytes), ctypes.c_void_p(stream), params, None),
                  f"launch of {self.name}")


_PROGRAMMATIC_STREAM_SERIALIZATION = 6           # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class _LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte value union (here its first int)."""
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _LaunchConfig(ctypes.Structure):
    """CUlaunchConfig of cuLaunchKernelEx."""
    _fields_ = [("grid_x", ctypes.c_uint), ("grid_y", ctypes.c_uint), ("grid_z", ctypes.c_uint),
                ("block_x", ctypes.c_uint), ("block_y", ctypes.c_uint), ("block_z", ctypes.c_uint),
                ("shared_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


class Program:
    """A CUDA C++ source whose template instances are compiled on first use (cached on disk) and loaded per device."""

    def __init__(self, source: str, name: str):
        self.source, self.name = source, name
        self._functions: dict = {}

    def function(self, expression: str, device_index: int) -> Function:
        key = (expression, device_index)
        fn = self._functions.get(key)
        if fn is None:
            with _lock:
                fn = self._functions.get(key) or self._load(expression, device_index)
                self._functions[key] = fn
        return fn

    def _load(self, expression: str, device_index: int) -> Function:
        import torch

        major, minor = torch.cuda.get_device_capability(device_index)
        arch = f"sm_{major}{minor}"
        digest = hashlib.sha256("\0".join((self.source, expression, arch, nvrtc_version())).encode()).hexdigest()[:24]
        folder = cache_dir("cuda")
        path = folder / f"{self.name}-{arch}-{digest}.cubin"
        name_path = path.with_suffix(".name")
        if path.exists() and name_path.exists():
            cubin, lowered = path.read_bytes(), name_path.read_text()
        else:
            cubin, lowered = compile_cubin(self.source, expression, arch)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(cubin)
            os.replace(tmp, path)
            name_path.write_text(lowered)
        cu = _cuda()
        with torch.cuda.device(device_index):
            torch.cuda.current_stream().cuda_stream          # torch initialises CUDA (cuInit) if it has not yet
            dev, ctx = ctypes.c_int(), ctypes.c_void_p()
            _check_cu(cu.cuDeviceGet(ctypes.byref(dev), device_index), "cuDeviceGet")
            _check_cu(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
            _check_cu(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
            module, fn = ctypes.c_void_p(), ctypes.c_void_p()
            _check_cu(cu.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(cubin)), f"loading {path.name}")
            _check_cu(cu.cuModuleGetFunction(ctypes.byref(fn), module, lowered.encode()), f"finding {expression}")
        return Function(fn, expression)


def source_file(name: str) -> Path:
    """A kernel source shipped beside this module (package data)."""
    return Path(__file__).with_name(name)
