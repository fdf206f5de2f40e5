"""The one model loader: a model directory (or the embedded demo model) -> a Model and its Tokenizer.

    model, tok = load()                                   # the demo model, 4-bit streaming layout (converted once)
    model, tok = load("~/models/q397-stream", ModelOptions(memory_budget=16 * 10**9, io_mode="direct"))
    path = quantized_variant("~/models/Qwen3.5-35B-A3B", bits=3)   # converted once, cached by content hash

``fmoe generate``, ``fmoe run``, ``fmoe chat``, ``fmoe eval``, the benchmarks and the Python API all load through
:func:`load` with a :class:`ModelOptions` (the CLI builds one from its shared model options, fmoe.cli.options).

The demo model ships as a Hugging Face bf16 checkpoint inside the package (``fmoe.demo.MODEL_DIR``); on first use it is
converted to the 4-bit streaming layout under the cache directory (fmoe.paths.cache_dir), keyed by the checkpoint's
content hash, so every engine path (quantized kernels, expert streaming) runs on it.
"""
from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fmoe.errors import FmoeError
from fmoe.paths import cache_dir

try:
    import fcntl
except ImportError:         # Windows: no flock; concurrent first-time conversions are not serialized there
    fcntl = None


@dataclass
class ModelOptions:
    """How to run a checkpoint: backend, compute dtype, device, experts per token, and (streaming layout only) the
    expert cache budget in bytes, the read mode, checksums on every read, expert prediction ("auto": on while experts
    come from the disk, fmoe.engine.model.Model.set_prediction; True / False) and (CUDA) the bytes of experts kept in
    VRAM."""
    backend: str = "torch"
    dtype: str = "float32"
    device: str | None = None
    experts_per_token: int | None = None
    memory_budget: int | None = None
    io_mode: str = "page-cache"
    verify: bool = False
    prediction: bool | str = "auto"
    gpu_memory_budget: int | None = None

    def stream(self) -> dict:
        return {"mode": self.io_mode, "verify": self.verify, "memory_budget": self.memory_budget}


_KEY_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_INDEX_FILES = ("model.safetensors.index.json", "manifest.json")


def _safetensors_header(p: Path) -> bytes:
    """The 8-byte length and JSON header of a safetensors file (names, dtypes, shapes, offsets)."""
    import struct

    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return head
        (n,) = struct.unpack("<Q", head)
        return head + f.read(min(n, 100 << 20))


def content_digest(path: Path) -> str:
    """12 hex digits of sha256 over a checkpoint (the conversion cache key): the whole config, single weights file
    and tokenizer files, the shard index (or streaming manifest), and for every other weight file (each shard of a
    sharded checkpoint, each expert file of a streaming layout) its name, size, mtime and a hash of its header.
    (A single-file checkpoint keys exactly as before shards were covered, so cached variants stay valid.)"""
    path = Path(path)
    h = hashlib.sha256()

    def whole(p: Path) -> None:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)

    for name in _KEY_FILES:
        if (path / name).exists():
            whole(path / name)
    for name in _INDEX_FILES:
        if (path / name).exists():
            h.update(f"\0index {name}\0".encode())
            whole(path / name)
    others = sorted(p for pat in ("*.safetensors", "experts/*.bin") for p in path.glob(pat)
                    if p.name != "model.safetensors")
    for p in others:
        st = p.stat()
        head = _safetensors_header(p) if p.suffix == ".safetensors" else b""
        h.update(f"\0shard {p.relative_to(path)} {st.st_size} {st.st_mtime_ns}\0".encode())
        h.update(hashlib.sha256(head).digest())
    return h.hexdigest()[:12]


def _group_size(src: Path) -> int:
    """The largest of 64 and 32 that divides every expert and hidden dimension of ``src``."""
    from fmoe.storage.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(src)
    c = checkpoint.config
    dims = [c.hidden_size, c.moe_intermediate_size, c.shared_expert_intermediate_size]
    if hasattr(checkpoint, "close"):
        checkpoint.close()
    return next((g for g in (64, 32) if all(d % g == 0 for d in dims)), 32)


def quantized_variant(src: str | Path, bits: int, group_size: int | None = None, quiet: bool = False) -> Path:
    """``src`` converted to the streaming layout at ``bits`` (cached under cache_dir()/variants); ``bits`` 16 is the
    checkpoint itself, unquantized."""
    from fmoe.storage.convert import convert

    src = Path(src).expanduser()
    if bits == 16:
        return src
    if not (src / "config.json").exists():
        raise FmoeError(f"no checkpoint to convert at {src} (config.json missing)")
    group_size = group_size or _group_size(src)
    dst = cache_dir("variants", f"{content_digest(src)}-{bits}bit-g{group_size}")
    if (dst / "manifest.json").exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    # two first-time loads (two processes) must not both convert: the second finish() would rename the first's
    # finished folder away and remove it under a reader.  Whoever gets the lock converts; the others wait for it and
    # find the manifest when they get the lock.
    with _exclusive_lock(dst.with_name(dst.name + ".lock")):
        if (dst / "manifest.json").exists():
            return dst
        if not quiet:
            print(f"fmoe: converting {src} to the {bits}-bit streaming layout (once) -> {dst}", file=sys.stderr)
        convert(src, dst, bits=bits, group_size=group_size, progress=not quiet, overwrite=dst.exists())
    return dst


@contextmanager
def _exclusive_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` body; blocks until it is free.
    Where ``fcntl`` is missing (Windows) this does not lock."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def resolve_model(path: str | Path | None, bits: int = 4, quiet: bool = False) -> Path:
    """``None`` -> the demo model in the streaming layout at ``bits``; ``ORG/NAME`` (not a path) -> its snapshot in
    the local Hugging Face cache (fmoe.storage.hf_cache); otherwise the directory given (checked)."""
    if path is None:
        from fmoe.demo import MODEL_DIR

        if not (MODEL_DIR / "config.json").exists():
            raise FmoeError(f"the embedded demo model is missing ({MODEL_DIR}); pass a model path instead")
        return quantized_variant(MODEL_DIR, bits, quiet=quiet)
    from fmoe.storage.hf_cache import looks_like_repo_id, resolve_hf_model

    if looks_like_repo_id(path):   # ORG/NAME: a Hugging Face id, from the local HF cache (offline)
        return resolve_hf_model(str(path))
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FmoeError(f"model directory not found: {p}")
    return p


def load_model(path: str | Path, options: ModelOptions | None = None):
    """A Model for a model directory; streaming options apply to the streaming layout only."""
    from fmoe.engine.model import Model
    from fmoe.storage.stream_layout import is_streaming_layout

    o = options or ModelOptions()
    p = Path(path)
    streaming = is_streaming_layout(p)
    if not streaming and not (p / "config.json").exists():
        raise FmoeError(f"no model at {p} (config.json missing)")
    return Model.load(p, backend=o.backend, dtype=o.dtype, device=o.device, experts_per_token=o.experts_per_token,
                      stream=o.stream() if streaming else None, predict_experts=o.prediction if streaming else False,
                      gpu_memory_budget=o.gpu_memory_budget)


def load_tokenizer(path: str | Path, model=None):
    """The tokenizer beside a checkpoint (the streaming layout keeps a copy of the source's tokenizer files)."""
    from fmoe.engine.tokenizer import Tokenizer

    for cand in (Path(getattr(getattr(model, "checkpoint", None), "path", path)), Path(path)):
        if (cand / "tokenizer.json").exists():
            return Tokenizer.from_dir(cand)
    raise FmoeError(f"no tokenizer.json in {path}: copy the source checkpoint's tokenizer files beside the model")


def load(path: str | Path | None = None, options: ModelOptions | None = None, *, bits: int = 4, quiet: bool = False):
    """(model, tokenizer) for a model directory, or for the demo model when ``path`` is None."""
    p = resolve_model(path, bits=bits, quiet=quiet)
    model = load_model(p, options)
    return model, load_tokenizer(p, model)
