"""The on-disk streaming layout: manifest, writer, and reader of non-expert weights.

A streaming layout is a directory::

    DST/
      manifest.json              format, version, config, per-tensor bits/group size, per-expert offset/size/crc32
      config.json                the model's config.json (what the config parser reads)
      non_expert.safetensors     every non-expert tensor under canonical names (bf16 stored as BF16)
      experts/layer_000.bin      per layer: expert e is one contiguous region at ``offsets[e]`` (4 KiB aligned,
      experts/layer_001.bin      padded to a multiple of 4 KiB) holding its 9 arrays, so one expert is one read
      ...
      tokenizer.json, tokenizer_config.json, chat_template.jinja, ...   (copied beside it)

Inside an expert region the arrays ``gate_proj.{weight,scales,biases}``, ``up_proj.*``, ``down_proj.*`` follow each
other, each starting at a 64-byte aligned offset, so :class:`QuantizedWeight` views into the read buffer are zero-copy
and aligned.  Every expert of a layer has the same shapes and bits (the layer's ``template``); ``stride`` is the
region size rounded up to 4 KiB, so the file is ``num_experts * stride`` bytes and O_DIRECT reads of whole regions are
legal.  ``crc32`` (zlib) is over the ``nbytes`` used bytes of the region (not the padding).

Non-expert tensors: a quantized linear ``X`` (canonical name, e.g. ``layers.0.self_attn.q_proj``) is stored as
``X.weight`` (U32), ``X.scales`` / ``X.biases`` (BF16); a name given with a trailing ``.weight`` (e.g.
``embed_tokens.weight`` when it is quantized) drops that suffix for the stored base name.  Dense float tensors are
stored as BF16 when that is lossless (or as given: F32/F16) and always load as float32.

The writer (:class:`StreamingWriter`) builds everything under ``DST.tmp-XXXX`` next to ``DST`` and renames it at the
end (manifest last), so an interrupted write never leaves a loadable ``DST``.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmoe.errors import LayoutError, ExpertReadError, ChecksumError
from fmoe.kernels.quant import QuantizedWeight, bf16_to_f32

FORMAT = "fmoe-streaming"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NON_EXPERT_FILE = "non_expert.safetensors"
EXPERT_DIR = "experts"
ALIGN = 4096            # expert region alignment (>= logical block size: O_DIRECT legal)
ARRAY_ALIGN = 64        # alignment of each array inside a region
PROJS = ("gate_proj", "up_proj", "down_proj")
PARTS = ("weight", "scales", "biases")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json",
    "generation_config.json", "vocab.json", "merges.txt", "added_tokens.json", "preprocessor_config.json",
)

_ST_DTYPES = {  # safetensors dtype -> (numpy storage dtype, what load() returns)
    "U32": np.uint32, "I32": np.int32, "U16": np.uint16, "I16": np.int16, "U8": np.uint8, "I8": np.int8,
    "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "F64": np.float64,
}
_NP_TO_ST = {np.dtype(np.uint32): "U32", np.dtype(np.int32): "I32", np.dtype(np.uint16): "U16",
             np.dtype(np.int16): "I16", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
             np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
             np.dtype(np.float64): "F64"}


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _qw_numpy(q: QuantizedWeight) -> QuantizedWeight:
    """QuantizedWeight with contiguous numpy arrays: weight uint32; scales/biases kept lossless as bf16 bits
    (uint16), float16 or float32 (mlx-lm files converted with ``--dtype float32`` carry float32 scales)."""
    if not all(isinstance(a, np.ndarray) for a in (q.weight, q.scales, q.biases)):
        q = q.numpy()
    w = np.ascontiguousarray(q.weight)
    if w.dtype == np.int32:
        w = w.view(np.uint32)
    sb = []
    for a in (q.scales, q.biases):
        a = np.ascontiguousarray(a)
        if a.dtype == np.int16:
            a = a.view(np.uint16)
        elif a.dtype == np.float64:
            a = a.astype(np.float32)
        if a.dtype not in (np.uint16, np.float16, np.float32):
            raise LayoutError(f"unsupported scales/biases dtype {a.dtype}")
        sb.append(a)
    if w.dtype != np.uint32:
        raise LayoutError(f"quantized weight must be uint32 words, got {w.dtype}")
    return QuantizedWeight(w, sb[0], sb[1], int(q.bits), int(q.group_size))


def _scales_st_dtype(a: np.ndarray) -> str:
    return "BF16" if a.dtype == np.uint16 else _NP_TO_ST[a.dtype]


# ------------------------------------------------------------------------------------------------ expert template


@dataclass(frozen=True)
class ArraySpec:
    name: str          # "gate_proj.weight"
    dtype: str         # numpy dtype name: "uint32" / "uint16"
    shape: tuple[int, ...]
    offset: int        # within the expert region
    nbytes: int


class ExpertTemplate:
    """Where the 9 arrays of one expert sit inside its region (same for every expert of a layer)."""

    def __init__(self, arrays: Sequence[ArraySpec], quant: dict[str, tuple[int, int]]):
        self.arrays = list(arrays)
        self.quant = dict(quant)            # proj -> (bits, group_size)
        self.nbytes = max(a.offset + a.nbytes for a in self.arrays)
        self.stride = _round_up(self.nbytes, ALIGN)
        self._np = [(a, np.dtype(a.dtype), int(np.prod(a.shape))) for a in self.arrays]

    @classmethod
    def from_weights(cls, gate: QuantizedWeight, up: QuantizedWeight, down: QuantizedWeight) -> "ExpertTemplate":
        arrays, quant, off = [], {}, 0
        for proj, q in zip(PROJS, (gate, up, down)):
            quant[proj] = (int(q.bits), int(q.group_size))
            for part in PARTS:
                a = getattr(q, part)
                arrays.append(ArraySpec(f"{proj}.{part}", str(a.dtype), tuple(int(s) for s in a.shape), off,
                                        int(a.nbytes)))
                off = _round_up(off + int(a.nbytes), ARRAY_ALIGN)
        return cls(arrays, quant)

    def to_json(self) -> dict:
        return {
            "nbytes": self.nbytes, "stride": self.stride,
            "quant": {p: {"bits": b, "group_size": g} for p, (b, g) in self.quant.items()},
            "arrays": [{"name": a.name, "dtype": a.dtype, "shape": list(a.shape), "offset": a.offset,
                        "nbytes": a.nbytes} for a in self.arrays],
        }

    @classmethod
    def from_json(cls, d: dict) -> "ExpertTemplate":
        arrays = [ArraySpec(a["name"], a["dtype"], tuple(a["shape"]), int(a["offset"]), int(a["nbytes"]))
                  for a in d["arrays"]]
        quant = {p: (int(v["bits"]), int(v["group_size"])) for p, v in d["quant"].items()}
        t = cls(arrays, quant)
        if t.stride != int(d["stride"]) or t.nbytes != int(d["nbytes"]):
            raise LayoutError("expert template: nbytes/stride disagree with the array list")
        return t

    def same_as(self, other: "ExpertTemplate") -> bool:
        return self.arrays == other.arrays and self.quant == other.quant

    def views(self, buf: Any, base: int = 0) -> tuple[QuantizedWeight, QuantizedWeight, QuantizedWeight]:
        """Zero-copy QuantizedWeights over ``buf`` (anything exporting a buffer) at region start ``base``."""
        arrs = [np.frombuffer(buf, dtype=dt, count=n, offset=base + a.offset).reshape(a.shape)
                for a, dt, n in self._np]
        out = []
        for i, proj in enumerate(PROJS):
            bits, gs = self.quant[proj]
            out.append(QuantizedWeight(arrs[3 * i], arrs[3 * i + 1], arrs[3 * i + 2], bits, gs))
        return tuple(out)  # type: ignore[return-value]


@dataclass
class LayerLayout:
    layer: int
    file: Path
    template: ExpertTemplate
    offsets: list[int]
    sizes: list[int]
    crcs: list[int]

    @property
    def stride(self) -> int:
        return self.template.stride

    @property
    def num_experts(self) -> int:
        return len(self.offsets)


# ------------------------------------------------------------------------------------------------ manifest / layout


class StreamingLayout:
    """A parsed manifest: where every expert and non-expert tensor of a streaming layout lives."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mpath = self.root / MANIFEST
        try:
            m = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise LayoutError(f"{self.root}: not a streaming layout (no {MANIFEST})") from None
        except json.JSONDecodeError as e:
            raise LayoutError(f"{mpath}: invalid JSON: {e}") from None
        if m.get("format") != FORMAT:
            raise LayoutError(f"{mpath}: format {m.get('format')!r} is not {FORMAT!r}")
        if int(m.get("format_version", -1)) != FORMAT_VERSION:
            raise LayoutError(f"{mpath}: format_version {m.get('format_version')} unsupported "
                              f"(this fmoe reads version {FORMAT_VERSION}); re-run fmoe convert")
        self.manifest = m
        self.config_raw: dict = m["config"]
        ex = m["experts"]
        self.num_layers = int(ex["num_layers"])
        self.num_experts = int(ex["num_experts"])
        self.layers: list[LayerLayout] = []
        for i, L in enumerate(ex["layers"]):
            tmpl = ExpertTemplate.from_json(L["template"])
            offs, sizes, crcs = zip(*L["experts"]) if L["experts"] else ((), (), ())
            if len(offs) != self.num_experts:
                raise LayoutError(f"{mpath}: layer {i} lists {len(offs)} experts, expected {self.num_experts}")
            if any(o % ALIGN for o in offs):
                raise LayoutError(f"{mpath}: layer {i} has an expert offset not aligned to {ALIGN}")
            self.layers.append(LayerLayout(i, self.root / L["file"], tmpl, list(offs), list(sizes), list(crcs)))
        if len(self.layers) != self.num_layers:
            raise LayoutError(f"{mpath}: {len(self.layers)} expert layers listed, expected {self.num_layers}")
        ne = m["non_expert"]
        self.non_expert_file = self.root / ne["file"]
        self.non_expert: dict[str, dict] = ne["tensors"]

    def expert_nbytes(self, layer: int) -> int:
        return self.layers[layer].template.nbytes

    def total_expert_bytes(self) -> int:
        return sum(L.template.nbytes * L.num_experts for L in self.layers)


def is_streaming_layout(path: str | Path) -> bool:
    """True when ``path`` is a complete streaming layout directory of a known format version."""
    p = Path(path) / MANIFEST
    if not p.is_file():
        return False
    try:
        m = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return m.get("format") == FORMAT and int(m.get("format_version", -1)) == FORMAT_VERSION


# ------------------------------------------------------------------------------------------------ safetensors I/O


class _SafetensorsReader:
    """Minimal safetensors reader (numpy; BF16 comes back as uint16 bits) with pread, no mmap."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise LayoutError(f"{path}: missing non-expert weights file") from None
        head = os.pread(self.fd, 8, 0)
        if len(head) != 8:
            raise LayoutError(f"{path}: truncated safetensors header")
        (n,) = struct.unpack("<Q", head)
        raw = os.pread(self.fd, n, 8)
        if len(raw) != n:
            raise LayoutError(f"{path}: truncated safetensors header")
        self.header = json.loads(raw)
        self.header.pop("__metadata__", None)
        self.data_start = 8 + n

    def read(self, name: str) -> tuple[np.ndarray, str]:
        info = self.header.get(name)
        if info is None:
            raise LayoutError(f"{self.path}: no tensor {name!r}")
        b, e = info["data_offsets"]
        n = e - b
        buf = np.empty(n, np.uint8)
        got = os.preadv(self.fd, [buf], self.data_start + b) if n else 0
        if got != n:
            raise LayoutError(f"{self.path}: tensor {name!r} truncated (read {got} of {n} bytes at offset "
                              f"{self.data_start + b})")
        dt = np.dtype(_ST_DTYPES[info["dtype"]])
        return buf.view(dt).reshape(info["shape"]), info["dtype"]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ------------------------------------------------------------------------------------------------ reader


class StreamingCheckpoint:
    """A streaming layout opened for inference; the same interface as ``fmoe.storage.checkpoint`` readers.

    ``config`` (ModelConfig), ``non_expert_names()``, ``load(name)``, ``expert(layer, e)`` (one plain read; prefer
    :meth:`expert_source` for inference), ``expert_source(...)`` -> :class:`fmoe.storage.expert_store.ExpertStore`.
    """

    def __init__(self, path: str | Path, verify: bool = False):
        self.path = Path(path)
        self.layout = StreamingLayout(self.path)
        self.verify = verify
        from fmoe.storage.config import ModelConfig
        self.config = ModelConfig.from_dict(self.layout.config_raw, source=str(self.path / MANIFEST))
        if self.config.num_hidden_layers != self.layout.num_layers or \
                self.config.num_experts != self.layout.num_experts:
            raise LayoutError(f"{self.path}: manifest has {self.layout.num_layers} layers x "
                              f"{self.layout.num_experts} experts but its config says "
                              f"{self.config.num_hidden_layers} x {self.config.num_experts}")
        self._st: _SafetensorsReader | None = None
        self._fds: dict[int, int] = {}
        self._fds_lock = threading.Lock()

    # -- interface shared with the checkpoint readers
    @property
    def manifest(self) -> dict:
        return self.layout.manifest

    @property
    def tokenizer_dir(self) -> Path:
        return self.path

    def non_expert_names(self) -> list[str]:
        return list(self.layout.non_expert)

    def _resolve(self, name: str) -> str:
        ne = self.layout.non_expert
        if name in ne:
            return name
        for alt in ((name[:-7],) if name.endswith(".weight") else ()) + (name + ".weight",):
            if alt in ne:
                return alt
        raise LayoutError(f"{self.path}: no non-expert tensor {name!r}")

    def load(self, name: str) -> np.ndarray | QuantizedWeight:
        key = self._resolve(name)
        info = self.layout.non_expert[key]
        if self._st is None:
            self._st = _SafetensorsReader(self.layout.non_expert_file)
        arrays = []
        for st_name, crc in zip(info["stored"], info["crc32"]):
            a, st_dtype = self._st.read(st_name)
            if self.verify and zlib.crc32(a.view(np.uint8).reshape(-1)) != crc:
                raise ChecksumError(f"{self.layout.non_expert_file}: checksum mismatch in tensor {st_name!r}",
                                    file=str(self.layout.non_expert_file))
            arrays.append((a, st_dtype))
        if info["kind"] == "quantized":
            (w, _), (s, _), (b, _) = arrays
            return QuantizedWeight(w, s, b, int(info["bits"]), int(info["group_size"]))
        a, st_dtype = arrays[0]
        if st_dtype == "BF16":
            return bf16_to_f32(a)
        if a.dtype.kind == "f":
            return a.astype(np.float32, copy=False)
        return a

    def _layer_fd(self, layer: int, e: int, file: Path, off: int) -> int:
        with self._fds_lock:        # convert reads experts from a thread pool: one fd per layer file, never two
            fd = self._fds.get(layer)
            if fd is None:
                try:
                    fd = self._fds[layer] = os.open(file, os.O_RDONLY)
                except OSError as ex:
                    raise ExpertReadError(f"cannot open the expert file of layer {layer} (expert {e}) {file} "
                                          f"(offset {off}): {ex.strerror or ex}", layer=layer, expert=e,
                                          file=str(file), offset=off) from ex
            return fd

    def expert(self, layer: int, e: int) -> tuple[QuantizedWeight, QuantizedWeight, QuantizedWeight]:
        L = self.layout.layers[layer]
        off, size = L.offsets[e], L.sizes[e]
        fd = self._layer_fd(layer, e, L.file, off)
        buf = bytearray(size)
        try:
            got = os.preadv(fd, [buf], off)
        except OSError as ex:
            raise ExpertReadError(f"read error of layer {layer} expert {e}: {size} bytes from {L.file} at offset "
                                  f"{off}: {ex.strerror or ex}", layer=layer, expert=e, file=str(L.file),
                                  offset=off) from ex
        if got != size:
            raise ExpertReadError(f"short read of layer {layer} expert {e}: {got} of {size} bytes from {L.file} "
                                  f"at offset {off}", layer=layer, expert=e, file=str(L.file), offset=off)
        if self.verify and zlib.crc32(buf) != L.crcs[e]:
            raise ChecksumError(f"checksum mismatch: layer {layer} expert {e} in {L.file} at offset {off}",
                                layer=layer, expert=e, file=str(L.file), offset=off)
        return L.template.views(buf)

    def expert_source(self, mode: str = "page-cache", memory_budget: int | None = None, verify: bool | None = None,
                      io_threads: int = 8, policy: str = "lru"):
        from fmoe.storage.expert_store import ExpertStore
        return ExpertStore(self.layout, mode=mode, memory_budget=memory_budget,
                           verify=self.verify if verify is None else verify, io_threads=io_threads, policy=policy)

    def close(self) -> None:
        if self._st is not None:
            self._st.close()
            self._st = None
        with self._fds_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_streaming(path: str | Path, verify: bool = False) -> StreamingCheckpoint:
    """Open a streaming layout directory (see :func:`is_streaming_layout`)."""
    return StreamingCheckpoint(path, verify=verify)


# ------------------------------------------------------------------------------------------------ writer


def _config_dims(config_raw: dict) -> tuple[int, int]:
    from fmoe.storage.config import ModelConfig
    cfg = ModelConfig.from_dict(config_raw)
    return cfg.num_hidden_layers, cfg.num_experts


def free_space_check(dst: str | Path, need_bytes: int, margin: float = 1.02) -> None:
    """Raise LayoutError when the filesystem holding ``dst`` has less than ``need_bytes * margin`` free."""
    p = Path(dst).resolve()
    probe = p
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes * margin:
        raise LayoutError(f"not enough free space for {p}: need about {need_bytes / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB free on {probe}")


OWNER_FILE = ".fmoe-writer"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(dst: str | Path) -> list[Path]:
    """Remove ``DST.tmp-*`` folders that an interrupted (killed) write left beside ``dst``: those whose writer
    process is gone (or that name no writer).  Returns what was removed."""
    dst = Path(dst).absolute()
    removed = []
    if not dst.parent.is_dir():
        return removed
    for t in dst.parent.glob(dst.name + ".tmp-*"):
        if not t.is_dir():
            continue
        try:
            pid = int((t / OWNER_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        shutil.rmtree(t, ignore_errors=True)
        removed.append(t)
    return removed


def directory_bytes(p: str | Path) -> int:
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def verify_layout(path: str | Path, progress=None) -> dict:
    """Read a whole streaming layout back and check every checksum the manifest records: each expert record and
    each stored non-expert tensor.  Raises ChecksumError / ExpertReadError / LayoutError at the first mismatch
    (naming it); returns counts."""
    layout = StreamingLayout(path)
    ne = 0
    st = _SafetensorsReader(layout.non_expert_file)
    try:
        for name, info in layout.non_expert.items():
            for st_name, crc in zip(info["stored"], info["crc32"]):
                a, _ = st.read(st_name)
                if zlib.crc32(a.view(np.uint8).reshape(-1)) != crc:
                    raise ChecksumError(f"{layout.non_expert_file}: checksum mismatch in non-expert tensor "
                                        f"{st_name!r} ({name})", file=str(layout.non_expert_file))
                ne += 1
    finally:
        st.close()
    experts = 0
    for L in layout.layers:
        fd = os.open(L.file, os.O_RDONLY)
        try:
            for e, (off, size, crc) in enumerate(zip(L.offsets, L.sizes, L.crcs)):
                buf = os.pread(fd, size, off)
                if len(buf) != size:
                    raise ExpertReadError(f"short read of layer {L.layer} expert {e} in {L.file} at offset {off}",
                                          layer=L.layer, expert=e, file=str(L.file), offset=off)
                if zlib.crc32(buf) != crc:
                    raise ChecksumError(f"checksum mismatch: layer {L.layer} expert {e} in {L.file} at offset "
                                        f"{off}", layer=L.layer, expert=e, file=str(L.file), offset=off)
                experts += 1
        finally:
            os.close(fd)
        if progress:
            progress(L.layer)
    return {"non_expert_tensors": ne, "experts": experts}


class StreamingWriter:
    """Writes a streaming layout under ``DST.tmp-XXXX`` and renames it to ``DST`` in :meth:`finish`.

    Use as a context manager: an exception inside the ``with`` block removes the temporary directory.
    ``add_non_expert(name, array | QuantizedWeight)`` and ``add_expert(layer, e, gate, up, down)`` in any order.
    """

    def __init__(self, dst: str | Path, config_raw: dict, *, tokenizer_dir: str | Path | None = None,
                 overwrite: bool = False, fsync: bool = True, metadata: dict | None = None):
        self.dst = Path(dst).absolute()
        if self.dst.exists() and not overwrite:
            raise LayoutError(f"{self.dst} already exists (pass overwrite/--force to replace it)")
        self.config_raw = dict(config_raw)
        self.num_layers, self.num_experts = _config_dims(self.config_raw)
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else None
        self.fsync = fsync
        self.metadata = dict(metadata or {})
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dst)
        self.tmp = Path(tempfile.mkdtemp(prefix=self.dst.name + ".tmp-", dir=self.dst.parent))
        (self.tmp / OWNER_FILE).write_text(f"{os.getpid()}\n")     # so a later run can tell a stale folder
        (self.tmp / EXPERT_DIR).mkdir()
        self._ne_data_path = self.tmp / (NON_EXPERT_FILE + ".data")
        self._ne_data = open(self._ne_data_path, "wb")
        self._ne_pos = 0
        self._ne_header: dict[str, dict] = {}
        self._ne_entries: dict[str, dict] = {}
        self._layers: list[dict | None] = [None] * self.num_layers
        self._buf: np.ndarray | None = None
        self._buf_tmpl: ExpertTemplate | None = None
        self._done = False
        self.bytes_written = 0

    # -- non-expert tensors
    def _put_tensor(self, st_name: str, a: np.ndarray, st_dtype: str) -> int:
        if st_name in self._ne_header:
            raise LayoutError(f"duplicate non-expert tensor {st_name!r}")
        a = np.ascontiguousarray(a)
        raw = a.view(np.uint8).reshape(-1) if a.size else np.empty(0, np.uint8)
        self._ne_data.write(memoryview(raw))
        self._ne_header[st_name] = {"dtype": st_dtype, "shape": list(a.shape),
                                    "data_offsets": [self._ne_pos, self._ne_pos + raw.size]}
        self._ne_pos += raw.size
        self.bytes_written += raw.size
        return zlib.crc32(raw)

    def add_non_expert(self, name: str, value: Any) -> None:
        if name in self._ne_entries:
            raise LayoutError(f"duplicate non-expert tensor {name!r}")
        if isinstance(value, QuantizedWeight):
            q = _qw_numpy(value)
            base = name[:-7] if name.endswith(".weight") else name
            stored = [f"{base}.weight", f"{base}.scales", f"{base}.biases"]
            crcs = [self._put_tensor(stored[0], q.weight, "U32"),
                    self._put_tensor(stored[1], q.scales, _scales_st_dtype(q.scales)),
                    self._put_tensor(stored[2], q.biases, _scales_st_dtype(q.biases))]
            self._ne_entries[name] = {"kind": "quantized", "bits": q.bits, "group_size": q.group_size,
                                      "shape": [q.out_features, q.in_features], "stored": stored, "crc32": crcs}
            return
        a = np.asarray(value)
        if a.dtype.kind == "f":
            a32 = np.ascontiguousarray(a, dtype=np.float32)
            u = a32.view(np.uint32)
            if a.dtype == np.float32 and not np.any(u & np.uint32(0xFFFF)):
                stored_a, st_dtype = (u >> np.uint32(16)).astype(np.uint16), "BF16"   # lossless
            elif a.dtype in (np.float32, np.float16):
                stored_a, st_dtype = a, _NP_TO_ST[a.dtype]
            else:
                stored_a, st_dtype = a32, "F32"
        else:
            if a.dtype not in _NP_TO_ST:
                raise LayoutError(f"non-expert tensor {name!r}: unsupported dtype {a.dtype}")
            stored_a, st_dtype = a, _NP_TO_ST[a.dtype]
        crc = self._put_tensor(name, stored_a, st_dtype)
        self._ne_entries[name] = {"kind": "dense", "dtype": "float32" if a.dtype.kind == "f" else str(a.dtype),
                                  "stored_dtype": st_dtype, "shape": list(a.shape), "stored": [name], "crc32": [crc]}

    # -- experts
    def _layer_state(self, layer: int, tmpl: ExpertTemplate) -> dict:
        st = self._layers[layer]
        if st is None:
            rel = f"{EXPERT_DIR}/layer_{layer:03d}.bin"
            fd = os.open(self.tmp / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, self.num_experts * tmpl.stride)
            st = self._layers[layer] = {"file": rel, "fd": fd, "template": tmpl,
                                        "experts": [None] * self.num_experts}
        elif not st["template"].same_as(tmpl):
            raise LayoutError(f"layer {layer}: expert shapes/bits differ between experts of the same layer")
        return st

    def add_expert(self, layer: int, e: int, gate: QuantizedWeight, up: QuantizedWeight,
                   down: QuantizedWeight) -> None:
        if not (0 <= layer < self.num_layers and 0 <= e < self.num_experts):
            raise LayoutError(f"expert ({layer}, {e}) out of range ({self.num_layers} layers, "
                              f"{self.num_experts} experts)")
        for q in (gate, up, down):
            if not isinstance(q, QuantizedWeight):
                raise LayoutError(f"layer {layer} expert {e}: the streaming layout stores quantized experts only")
        qs = [_qw_numpy(q) for q in (gate, up, down)]
        tmpl = ExpertTemplate.from_weights(*qs)
        st = self._layer_state(layer, tmpl)
        tmpl = st["template"]
        if self._buf is None or self._buf.size < tmpl.stride or not (self._buf_tmpl and self._buf_tmpl.same_as(tmpl)):
            self._buf = np.zeros(tmpl.stride, np.uint8)
            self._buf_tmpl = tmpl
        buf = self._buf[:tmpl.stride]
        specs = iter(tmpl.arrays)
        for q in qs:
            for part in PARTS:
                a = getattr(q, part)
                spec = next(specs)
                buf[spec.offset:spec.offset + spec.nbytes] = a.view(np.uint8).reshape(-1)
        crc = zlib.crc32(buf[:tmpl.nbytes])
        off = e * tmpl.stride
        n = os.pwrite(st["fd"], buf, off)
        if n != tmpl.stride:
            raise LayoutError(f"short write to {self.tmp / st['file']} at offset {off}")
        st["experts"][e] = [off, tmpl.nbytes, crc]
        self.bytes_written += tmpl.stride

    # -- finish / abort
    def _write_safetensors(self) -> None:
        self._ne_data.close()
        header = dict(self._ne_header)
        header["__metadata__"] = {"format": "fmoe-streaming"}
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (_round_up(8 + len(hb), ALIGN) - 8 - len(hb))   # data starts 4 KiB aligned
        out = self.tmp / NON_EXPERT_FILE
        with open(out, "wb") as f, open(self._ne_data_path, "rb") as src:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            shutil.copyfileobj(src, f, 16 << 20)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._ne_data_path.unlink()

    def finish(self) -> Path:
        """Check completeness, write the manifest and rename the directory to ``dst``; returns ``dst``."""
        layers_json = []
        for i, st in enumerate(self._layers):
            if st is None:
                raise LayoutError(f"layer {i}: no experts were written")
            missing = [e for e, x in enumerate(st["experts"]) if x is None]
            if missing:
                raise LayoutError(f"layer {i}: experts {missing[:8]}{'...' if len(missing) > 8 else ''} missing")
            if self.fsync:
                os.fsync(st["fd"])
            os.close(st["fd"])
            st["fd"] = -1
            layers_json.append({"file": st["file"], "template": st["template"].to_json(), "experts": st["experts"]})
        self._write_safetensors()
        if self.tokenizer_dir is not None:
            for fn in TOKENIZER_FILES:
                if (self.tokenizer_dir / fn).is_file():
                    shutil.copy2(self.tokenizer_dir / fn, self.tmp / fn)
        (self.tmp / "config.json").write_text(json.dumps(self.config_raw, indent=2))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "alignment": ALIGN, "checksum": "crc32",
            "metadata": self.metadata,
            "config": self.config_raw,
            "non_expert": {"file": NON_EXPERT_FILE, "tensors": self._ne_entries},
            "experts": {"num_layers": self.num_layers, "num_experts": self.num_experts,
                        "layers": layers_json},
        }
        (self.tmp / OWNER_FILE).unlink(missing_ok=True)
        mp = self.tmp / MANIFEST
        with open(mp, "w") as f:      # the manifest is written last: a directory without one never loads
            json.dump(manifest, f, separators=(",", ":"))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        old = None
        if self.dst.exists():
            old = self.dst.with_name(self.dst.name + f".old-{os.getpid()}")
            os.rename(self.dst, old)
        os.rename(self.tmp, self.dst)
        if self.fsync:
            dfd = os.open(self.dst.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._done = True
        return self.dst

    def abort(self) -> None:
        """Remove the temporary directory (idempotent)."""
        if self._done:
            return
        try:
            self._ne_data.close()
        except Exception:
            pass
        for st in self._layers:
            if st is not None and st["fd"] >= 0:
                os.close(st["fd"])
                st["fd"] = -1
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> "StreamingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.abort()
            raise LayoutError("StreamingWriter left without finish(): nothing was written")
