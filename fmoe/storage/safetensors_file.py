"""Lazy, validated reading of (sharded) safetensors files.

The header of every shard is parsed and checked against the file size up front, so a truncated shard is an error
naming the file and the first tensor that does not fit, before anything is computed. Tensors are read lazily through
a read-only memory map: a 200 GB checkpoint opens instantly and only the tensors used are paged in. bf16 tensors are
returned as uint16 bit patterns (numpy has no bfloat16).
"""
from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmoe.errors import CheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str          # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    start: int          # absolute byte offset of the data in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsFile:
    """One .safetensors file: header parsed eagerly, data mapped lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: truncated safetensors file (no header)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    raise CheckpointError(f"{self.path}: truncated safetensors file (header of {n} bytes, file {size})")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header: {e}") from None
        self.metadata = header.pop("__metadata__", None) or {}
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, meta in header.items():
            dtype = meta.get("dtype")
            if dtype not in _DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype!r}")
            s, e = meta["data_offsets"]
            shape = tuple(int(d) for d in meta["shape"])
            info = TensorInfo(name, dtype, shape, self.path, base + s, base + e)
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
            if info.nbytes != expected:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} spans {info.nbytes} bytes but shape {list(shape)} {dtype} needs {expected}"
                )
            if info.end > size:
                raise CheckpointError(
                    f"{self.path}: truncated file: tensor {name!r} ends at byte {info.end} but the file has {size}"
                )
            self.tensors[name] = info
        self._map: mmap.mmap | None = None

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def array(self, name: str) -> np.ndarray:
        """A read-only numpy view of one tensor (bf16 as uint16)."""
        info = self.tensors[name]
        dt = np.dtype(_DTYPES[info.dtype])
        count = info.nbytes // dt.itemsize
        return np.frombuffer(self._mapped(), dtype=dt, count=count, offset=info.start).reshape(info.shape)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # views still alive; the map is released with them
                pass
            self._map = None


class SafetensorsDir:
    """All tensors of a checkpoint directory (one file, or shards listed by model.safetensors.index.json)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: not a directory")
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: invalid index file: {e}") from None
            files = sorted(set(weight_map.values()))
        else:
            weight_map = None
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.dir}: no .safetensors files")
        self.files = {fn: SafetensorsFile(self.dir / fn) for fn in files}
        self.info: dict[str, TensorInfo] = {}
        for fn, sf in self.files.items():
            for name, info in sf.tensors.items():
                self.info[name] = info
        if weight_map is not None:
            for name, fn in weight_map.items():
                if name not in self.files[fn].tensors:
                    raise CheckpointError(f"{self.dir / fn}: tensor {name!r} listed in the index is not in the file")

    def __contains__(self, name: str) -> bool:
        return name in self.info

    def names(self) -> list[str]:
        return list(self.info)

    def array(self, name: str) -> np.ndarray:
        try:
            info = self.info[name]
        except KeyError:
            raise CheckpointError(f"{self.dir}: missing tensor {name!r}") from None
        return self.files[info.file.name].array(name)

    def close(self) -> None:
        for f in self.files.values():
            f.close()

