"""ExpertStore: the streaming ExpertSource (docs/design.md, Interfaces) reading experts from a streaming layout.

Reads
    One expert = one read of its 4 KiB-aligned region (``os.preadv`` into a page-aligned anonymous ``mmap``; the call
    releases the GIL, so ``io_threads`` reads are in flight at once).  The returned QuantizedWeights are zero-copy
    numpy views into that buffer.  Do not modify them: they may be served again from the cache.

Modes
    ``page-cache``  buffered reads: the OS page cache is the cache (as Flash-MoE).  By default (``memory_budget``
                    None or 0) the engine keeps nothing after ``get`` returns, and ``prefetch`` becomes a kernel
                    read-ahead hint (``posix_fadvise(WILLNEED)``) issued from the I/O threads.  With a budget, the
                    engine also keeps an expert cache, exactly as in ``direct`` mode.
    ``direct``      ``O_DIRECT`` reads (no page cache) into the engine's own cache, bounded by ``memory_budget``
                    bytes (default: a quarter of physical RAM).  ``prefetch`` reads into the cache when the budget
                    allows (without evicting other prefetched-but-unused experts), else the hint is dropped.

Budget
    ``resident_bytes`` = bytes of every buffer the cache holds (ready, being read, prefetched).  It never exceeds
    ``memory_budget`` except transiently inside a ``get`` call, for the experts that call is returning (they must be
    in memory to be returned); when ``get`` returns the cache is trimmed back under the budget.  Experts the caller
    still holds (views returned by the last ``get``) live on outside the budget until the caller drops them: at most
    one layer's worth of active experts.

Eviction policy: ``lru`` or ``lfu`` (frequency-aware: among the 32 least recently used evictable entries, evict the
one requested least often, with counts halved every ``16 * num_experts`` requests).

Errors: a failed, short or corrupt (``verify=True``) read raises :class:`fmoe.errors.ExpertReadError` /
:class:`fmoe.errors.ChecksumError` naming layer, expert, file and offset.  Never a dropped expert.

Thread safety: ``get``/``prefetch``/``stats`` may be called from any thread; a lock guards the cache.
"""
from __future__ import annotations

import mmap
import os
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import numpy as np

from fmoe.errors import ChecksumError, ConfigError, ExpertReadError, LayoutError
from fmoe.storage import osio
from fmoe.storage.stream_layout import StreamingLayout

MODES = ("page-cache", "direct")
POLICIES = ("lru", "lfu")
_LFU_WINDOW = 32
MAPPED_VIEWS = 8192       # zero-copy experts whose views are kept (a 397B-shaped layer has 512)
# Seconds for which an expert found in the page cache is taken as still there by the zero-copy path (``_get_mapped``)
# without asking again. A warm decode asked for every expert of every token (4 mincore calls each, 14-24 us on the
# 2-core machine, 120 experts a token on the 12-layer 397B slice: 1.3-1.9 ms of a 40 ms token on 16 cores). An
# expert evicted inside that window is read by the page faults that touch it, as a page missed by the sampled check
# already was; a file this process evicts (osio.drop_from_page_cache: the benchmarks' cold starts) makes every expert
# be asked about again. FMOE_RESIDENT_RECHECK_S overrides it (0: ask every time).
RESIDENT_RECHECK_S = 1.0


# What a process running the engine holds besides weights and experts: the interpreter and torch (~220 MiB on Linux
# x86-64), activations, the KV cache of a short context, allocator slack.  Measured: 225 MiB after imports, about
# 100-250 MiB more while decoding a 397B-shaped model (bench/results/stream-memory-*.json).
PROCESS_OVERHEAD = 400 << 20


def resident_estimate(layout: StreamingLayout, memory_budget: int, io_threads: int = 8, top_k: int | None = None,
                      non_expert_bytes: int | None = None) -> dict:
    """Where a streaming process's resident memory goes (bytes), as documented in
    docs/reference/streaming-format.md (Memory):

    ``non_expert``  the non-expert weights, resident as stored (the size of non_expert.safetensors)
    ``budget``      the expert cache (``memory_budget``)
    ``pool``        idle recycled read buffers, at most ``max(io_threads, 2 * top_k)`` expert strides
    ``held``        experts outside the budget: those a ``get`` returns on top of a full cache, those the caller
                    still holds, evicted buffers not yet recycled: at most ``3 * top_k`` strides
    ``overhead``    the process itself (PROCESS_OVERHEAD)
    ``total``       the sum: peak RSS stays below it
    """
    cfg = layout.config_raw.get("text_config", layout.config_raw)
    k = int(top_k or cfg.get("num_experts_per_tok", 8))
    stride = max(L.stride for L in layout.layers)
    ne = os.path.getsize(layout.non_expert_file) if non_expert_bytes is None else int(non_expert_bytes)
    out = {"non_expert": ne, "budget": int(memory_budget), "pool": max(int(io_threads), 2 * k) * stride,
           "held": 3 * k * stride, "overhead": PROCESS_OVERHEAD}
    out["total"] = sum(out.values())
    return out


def budget_for_memory(limit: int, layout: StreamingLayout, io_threads: int = 8, top_k: int | None = None,
                      non_expert_bytes: int | None = None) -> int:
    """The largest expert cache budget whose :func:`resident_estimate` fits in ``limit`` bytes (0 when even the
    non-expert weights and the overhead do not fit: the caller should refuse, see :func:`memory_floor`)."""
    return max(0, limit - resident_estimate(layout, 0, io_threads, top_k, non_expert_bytes)["total"])


def memory_floor(layout: StreamingLayout, io_threads: int = 8, top_k: int | None = None,
                 non_expert_bytes: int | None = None) -> int:
    """Resident memory with a zero budget: below this no setting fits."""
    return resident_estimate(layout, 0, io_threads, top_k, non_expert_bytes)["total"]


def _default_direct_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 4 << 30


_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)
_POPULATE = {"on": _MADV_POPULATE_READ is not None and hasattr(mmap.mmap, "madvise")}


def _populate(m: mmap.mmap, off: int, size: int) -> None:
    """Fill the page tables of an expert's range of a mapping in one call (``MADV_POPULATE_READ``, Linux 5.14+) so
    that the kernel's first pass over it does not take one minor fault per 4 KiB page (measured on a 16-core Xeon:
    those faults were most of a decode token outside the mat-vec). Where the OS lacks it, the faults happen."""
    if not _POPULATE["on"]:
        return
    start = off - off % mmap.PAGESIZE
    try:
        m.madvise(_MADV_POPULATE_READ, start, off + size - start)
    except (OSError, ValueError):
        _POPULATE["on"] = False


class _Entry:
    __slots__ = ("key", "nbytes", "future", "prefetched", "used", "pins", "buf")

    def __init__(self, key: tuple[int, int], nbytes: int, prefetched: bool):
        self.key = key
        self.nbytes = nbytes
        self.buf = None                      # the mmap the expert is read into (set by the I/O thread)
        self.future: Future | None = None
        self.prefetched = prefetched
        self.used = False
        self.pins = 0

    def ready(self) -> bool:
        return self.future is not None and self.future.done()


def _recheck_from_env() -> float:
    raw = os.environ.get("FMOE_RESIDENT_RECHECK_S")
    if raw is None:
        return RESIDENT_RECHECK_S
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not v >= 0:
        raise ConfigError(f"FMOE_RESIDENT_RECHECK_S must be a number of seconds >= 0, got {raw!r}")
    return v


class ExpertStore:
    """Streaming ExpertSource over a :class:`StreamingLayout` (usually from ``open_streaming(p).expert_source()``)."""

    def __init__(self, layout: StreamingLayout | str, mode: str = "page-cache", memory_budget: int | None = None,
                 verify: bool = False, io_threads: int = 8, policy: str = "lru"):
        if not isinstance(layout, StreamingLayout):
            layout = StreamingLayout(layout)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if memory_budget is None:
            memory_budget = _default_direct_budget() if mode == "direct" else 0
        if memory_budget < 0:
            raise ValueError("memory_budget must be >= 0")
        self.layout = layout
        self.mode = mode
        self.memory_budget = int(memory_budget)
        self.verify = verify
        self.policy = policy
        self.io_threads = max(1, int(io_threads))
        self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="fmoe-io")
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        self._fds: dict[int, int] = {}
        self._hinted: set[tuple[int, int]] = set()
        self._hint_missing: dict[tuple[int, int], int] = {}   # bytes not in the page cache when a hint was issued
        self._freq: dict[tuple[int, int], float] = {}
        self._requests = 0
        self._closed = False
        # buffer recycling: faulting in fresh pages costs more CPU than the read itself on small VMs, so buffers of
        # evicted experts are reused once nobody references them (refcount check: never while the caller holds
        # views).  Idle buffers are bounded by ``pool_buffers`` (outside the budget; stats "pool_bytes").
        cfg = layout.config_raw.get("text_config", layout.config_raw)
        k = int(cfg.get("num_experts_per_tok", 8))
        self.pool_buffers = max(self.io_threads, 2 * k)
        self._pool_lock = threading.Lock()
        self._free: list = []
        self._retired: deque = deque()
        self._allocator = None
        self._maps: dict[int, tuple] = {}               # layer -> (read-only mapping, address): zero-copy hits
        self._mapped_layers: set[int] = set()          # layers served from their mapping despite an allocator
        self._map_lock = threading.Lock()
        self._populated: set[tuple[int, int]] = set()
        self._views: OrderedDict[tuple[int, int], tuple] = OrderedDict()   # mapped experts' views, most recent last
        self._resident_seen: dict[tuple[int, int], float] = {}   # expert -> when it was last found in the page cache
        self.resident_recheck_s = _recheck_from_env()
        self._seen_drops = osio.drops()
        self.reset_stats()
        self._resident = 0
        self._peak_resident = 0

    # ------------------------------------------------------------------------------------------------ stats

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._s = dict(bytes_read=0, reads=0, cache_hits=0, cache_misses=0, io_wait_s=0.0, read_s=0.0,
                           prefetch_issued=0, prefetch_used=0, prefetch_hits=0, prefetch_dropped=0, evictions=0, gets=0,
                           buffers_allocated=0, buffers_reused=0, disk_bytes=0, page_cache_bytes=0, hint_errors=0,
                           zero_copy_reads=0)
        if hasattr(self, "_resident"):
            with self._lock:
                self._peak_resident = self._resident

    def stats(self) -> dict:
        with self._stats_lock:
            s = dict(self._s)
        with self._lock:
            s["resident_bytes"] = self._resident
            s["peak_resident_bytes"] = self._peak_resident
            s["cached_experts"] = len(self._cache)
        with self._pool_lock:
            s["pool_bytes"] = sum(len(b) for b in self._free)
        req = s["cache_hits"] + s["cache_misses"]
        s["cache_hit_rate"] = s["cache_hits"] / req if req else 0.0
        # hits on experts that were in the cache before their prefetch (i.e. not brought in by a prefetch)
        s["cache_hit_rate_excl_prefetch"] = (s["cache_hits"] - s["prefetch_hits"]) / req if req else 0.0
        s["prefetch_hit_rate"] = s["prefetch_used"] / s["prefetch_issued"] if s["prefetch_issued"] else 0.0
        # page-cache mode: the share of bytes read that the page cache served (mincore before each read)
        s["page_cache_hit_rate"] = s["page_cache_bytes"] / s["bytes_read"] if s["bytes_read"] else 0.0
        s["uncached_io"] = osio.uncached_kind() if self.mode == "direct" else None
        s.update(mode=self.mode, memory_budget=self.memory_budget, policy=self.policy, verify=self.verify,
                 io_threads=self.io_threads)
        return s

    def set_allocator(self, allocate) -> None:
        """Read buffers allocated from now on come from ``allocate(nbytes)`` (a page-aligned, writable object with
        the buffer protocol, e.g. a pinned torch tensor's ``.numpy()``); idle buffers from before are dropped."""
        with self._pool_lock:
            self._allocator = allocate
            self._free.clear()

    # ------------------------------------------------------------------------------------------------ I/O

    def _fd(self, layer: int) -> int:
        fd = self._fds.get(layer)
        if fd is None:
            with self._lock:
                fd = self._fds.get(layer)
                if fd is None:
                    path = self.layout.layers[layer].file
                    try:
                        fd = osio.open_uncached(path) if self.mode == "direct" else os.open(path, os.O_RDONLY)
                    except FileNotFoundError:
                        raise ExpertReadError(f"layer {layer}: expert file {path} is missing", layer=layer,
                                              file=str(path)) from None
                    except OSError as ex:
                        hint = " (this filesystem may not support O_DIRECT: use mode='page-cache')" \
                            if self.mode == "direct" else ""
                        raise ExpertReadError(f"layer {layer}: cannot open {path}: {ex}{hint}", layer=layer,
                                              file=str(path)) from None
                    self._fds[layer] = fd
        return fd

    def _alloc(self, nbytes: int):
        with self._pool_lock:
            for i, b in enumerate(self._free):
                if len(b) == nbytes:
                    del self._free[i]
                    reused = True
                    break
            else:
                b, reused = None, False
        if b is None:
            # anonymous (page aligned, zero filled), or the caller's allocator: the CUDA tier reads into pinned
            # host memory, so that the host-to-GPU copy of a miss is an asynchronous DMA from the read buffer itself
            b = self._allocator(nbytes) if self._allocator is not None else mmap.mmap(-1, nbytes)
        with self._stats_lock:
            self._s["buffers_reused" if reused else "buffers_allocated"] += 1
        return b

    def _retire_locked(self, ent: _Entry) -> None:
        """An entry left the cache: its buffer may be reused once the caller no longer references it."""
        buf, ent.buf = ent.buf, None
        failed = ent.future is not None and ent.future.done() and ent.future.exception() is not None
        ent.future = None                                # drops our views into buf
        if buf is not None and not failed:
            self._retired.append(buf)
            if len(self._retired) > 4 * self.pool_buffers:
                self._retired.popleft()                  # still referenced by someone: freed when they drop it

    def _recycle_locked(self) -> None:
        n = len(self._retired)
        for _ in range(n):
            b = self._retired.popleft()
            if sys.getrefcount(b) <= 2:                  # only `b` and the call's argument: nobody holds views
                with self._pool_lock:
                    if len(self._free) < self.pool_buffers:
                        self._free.append(b)
            else:
                self._retired.append(b)
            del b

    def _read(self, ent: _Entry):
        """Runs in an I/O thread: one read of expert ``e``'s region, checksum, zero-copy views."""
        layer, e = ent.key
        L = self.layout.layers[layer]
        off, size = L.offsets[e], L.sizes[e]
        n = L.stride if self.mode == "direct" else size     # O_DIRECT: whole aligned region
        where = f"layer {layer} expert {e} ({L.file}, offset {off}, {n} bytes)"
        t0 = time.perf_counter()
        fd = self._fd(layer)
        cached = osio.resident_bytes(fd, off, n) if self.mode == "page-cache" else 0
        buf = self._alloc(L.stride)
        mv = memoryview(buf)
        got = 0
        try:
            while got < n:
                try:
                    r = os.preadv(fd, [mv[got:n]], off + got)
                except OSError as ex:
                    raise ExpertReadError(f"I/O error reading {where}: {ex}", layer=layer, expert=e,
                                          file=str(L.file), offset=off) from ex
                if r <= 0 or self.mode == "direct" and r < n:
                    got += max(r, 0)
                    break
                got += r
            if got < n:
                raise ExpertReadError(f"short read of {where}: got {got} bytes (file truncated?)", layer=layer,
                                      expert=e, file=str(L.file), offset=off)
            if self.verify:
                crc = zlib.crc32(mv[:size])
                if crc != L.crcs[e]:
                    raise ChecksumError(f"checksum mismatch in {where}: crc32 {crc:08x}, manifest "
                                        f"{L.crcs[e]:08x}", layer=layer, expert=e, file=str(L.file), offset=off)
        finally:
            mv.release()
        weights = L.template.views(buf)
        ent.buf = buf
        dt = time.perf_counter() - t0
        with self._stats_lock:
            self._s["bytes_read"] += n
            # page-cache mode: what was not in the page cache came from the disk, for this read or for the
            # read-ahead hint issued before it (those pages were missing when the hint went out)
            missing = min(n, n - (cached or 0) + self._hint_missing.pop(ent.key, 0))
            self._s["disk_bytes"] += missing
            self._s["page_cache_bytes"] += n - missing
            self._s["reads"] += 1
            self._s["read_s"] += dt
        return weights

    def _hint(self, layer: int, e: int) -> None:
        L = self.layout.layers[layer]
        try:
            fd = self._fd(layer)
            cached = osio.resident_bytes(fd, L.offsets[e], L.sizes[e])
            if osio.advise_willneed(fd, L.offsets[e], L.sizes[e]) and cached is not None:
                key = (layer, e)
                with self._stats_lock:
                    if len(self._hint_missing) > 64 * self.layout.num_experts:
                        self._hint_missing.clear()
                    self._hint_missing[key] = L.sizes[e] - cached
                with self._lock:
                    taken = key not in self._hinted
                if taken:   # a get took the expert while this ran (and counted it): an entry left now would be
                    with self._stats_lock:   # counted as disk bytes against a later get (a later generation's)
                        self._hint_missing.pop(key, None)
        except Exception:   # a hint: the get() that follows reports real errors; counted, never lost in a future
            with self._stats_lock:
                self._s["hint_errors"] += 1

    # ------------------------------------------------------------------------------------------------ cache

    def _check(self, layer: int, experts: Sequence[int]) -> list[tuple[int, int]]:
        if self._closed:
            raise LayoutError("ExpertStore is closed")
        if not 0 <= layer < self.layout.num_layers:
            raise IndexError(f"layer {layer} out of range (0..{self.layout.num_layers - 1})")
        keys = []
        for e in experts:
            e = int(e)
            if not 0 <= e < self.layout.num_experts:
                raise IndexError(f"expert {e} out of range (0..{self.layout.num_experts - 1})")
            keys.append((layer, e))
        return keys

    def _touch_freq(self, key) -> None:
        if self.policy != "lfu":
            return
        self._freq[key] = self._freq.get(key, 0.0) + 1.0
        self._requests += 1
        if self._requests >= 16 * self.layout.num_experts:
            self._requests = 0
            self._freq = {k: v / 2 for k, v in self._freq.items() if v >= 0.5}

    def _evictable(self, ent: _Entry, keep_prefetched: bool) -> bool:
        return ent.pins == 0 and ent.ready() and not (keep_prefetched and ent.prefetched and not ent.used)

    def _evict_locked(self, target: int, keep_prefetched: bool) -> None:
        """Drop evictable entries (LRU order, or frequency-aware) until resident <= target."""
        evicted = 0
        while self._resident > target:
            victim = None
            if self.policy == "lru":
                for ent in self._cache.values():
                    if self._evictable(ent, keep_prefetched):
                        victim = ent
                        break
            else:
                best, seen = None, 0
                for ent in self._cache.values():
                    if self._evictable(ent, keep_prefetched):
                        f = self._freq.get(ent.key, 0.0)
                        if best is None or f < best[0]:
                            best = (f, ent)
                        seen += 1
                        if seen >= _LFU_WINDOW:
                            break
                victim = best[1] if best else None
            if victim is None:
                break
            del self._cache[victim.key]
            self._resident -= victim.nbytes
            self._retire_locked(victim)
            evicted += 1
        if evicted:
            with self._stats_lock:
                self._s["evictions"] += evicted

    def _add_locked(self, key, prefetched: bool, deferred: list | None = None) -> _Entry:
        L = self.layout.layers[key[0]]
        ent = _Entry(key, L.stride, prefetched)
        self._cache[key] = ent
        self._resident += ent.nbytes
        if self._resident > self._peak_resident:
            self._peak_resident = self._resident
        if deferred is not None:        # resolved by the caller once the lock is released (_start_deferred)
            ent.future = Future()
            deferred.append(ent)
        else:
            ent.future = self._pool.submit(self._read, ent)
        return ent

    def _start_deferred(self, entries: list) -> None:
        """Zero-copy mode: map the experts already in the page cache here (no hand-off to an I/O thread), send the
        others to the I/O threads as reads."""
        for ent in entries:
            layer, e = ent.key
            L = self.layout.layers[layer]
            off, size = L.offsets[e], L.sizes[e]
            try:
                fd = self._fd(layer)
                m, base = self._map(layer, fd)
                # a file cut short takes the read path (it names the short read); where mincore is missing
                # (pages_resident None) nothing is mapped
                if off + size <= len(m) and osio.pages_resident(base + off, size, samples=4) is True:
                    where = f"layer {layer} expert {e} ({L.file}, offset {off}, {size} bytes)"
                    ent.future.set_result(self._mapped(ent, fd, off, size, where, time.perf_counter()))
                    continue
            except Exception as ex:  # noqa: BLE001 - reported by get() like a failed read
                ent.future.set_exception(ex)
                continue
            self._pool.submit(self._read_into, ent, ent.future)

    def _read_into(self, ent: _Entry, fut: Future) -> None:
        try:
            fut.set_result(self._read(ent))
        except BaseException as ex:  # noqa: BLE001 - the future carries it to get()
            fut.set_exception(ex)

    # ------------------------------------------------------------------------------------------------ API

    def prefetch(self, layer: int, experts: Sequence[int]) -> None:
        """Non-blocking hint: start reading these experts of ``layer`` (those not cached yet)."""
        keys = self._check(layer, experts)
        issued = dropped = 0
        hints = []
        with self._lock:
            for key in dict.fromkeys(keys):
                if key in self._cache:
                    continue
                need = self.layout.layers[layer].stride
                if self.memory_budget and self._resident + need > self.memory_budget:   # (no cache: no pass)
                    self._evict_locked(self.memory_budget - need, keep_prefetched=True)
                if self._resident + need <= self.memory_budget:
                    self._add_locked(key, prefetched=True)
                    issued += 1
                elif self.mode == "page-cache":
                    if key not in self._hinted:
                        if len(self._hinted) > 64 * self.layout.num_experts:
                            self._hinted.clear()
                        self._hinted.add(key)
                        hints.append(key)
                        issued += 1
                else:
                    dropped += 1
        for key in hints:
            self._pool.submit(self._hint, *key)
        if issued or dropped:
            with self._stats_lock:
                self._s["prefetch_issued"] += issued
                self._s["prefetch_dropped"] += dropped

    def _zero_copy(self, layer: int) -> bool:
        """Page-cache mode with no engine cache and the store's own buffers (or a layer given to ``serve_mapped``):
        an expert wholly in the page cache is served as views of a read-only mapping of its file, with no copy
        (measured on a 2-core machine: the copy of each expert by ``pread`` took a quarter of a decode token)."""
        return self.mode == "page-cache" and self.memory_budget == 0 and (
            self._allocator is None or layer in self._mapped_layers)

    def mapping(self, layer: int) -> tuple[mmap.mmap, int]:
        """(the layer file's read-only mapping, its address): made once, shared with the zero-copy hits."""
        return self._map(layer, self._fd(layer))

    def file_resident(self, layer: int) -> float | None:
        """The share of the layer's file in the page cache now (``mincore``), or None where that cannot be asked."""
        fd = self._fd(layer)
        size = os.fstat(fd).st_size
        got = osio.resident_bytes(fd, 0, size)
        return None if got is None else (got / size if size else 1.0)

    def serve_mapped(self, layer: int) -> None:
        """From now on serve ``layer``'s experts that are in the page cache as views of its mapping, even with an
        allocator set: the CUDA tier calls it once it has registered the mapping for DMA (its pages are then as
        good as a pinned buffer); the others are still read into the allocator's buffers."""
        if self.mode != "page-cache":
            raise ValueError(f"serve_mapped needs page-cache mode (this store is {self.mode!r})")
        self.mapping(layer)
        self._mapped_layers.add(layer)

    def mapped_spans(self, layer: int, experts: Sequence[int]) -> list[tuple[int, int]]:
        """(offset, size) of each expert in the layer's mapping, counted as zero-copy reads served by the page cache
        (as ``get`` counts them), for a caller that copies them straight from a mapping it has locked in memory: the
        CUDA tier, for a layer it registered (``serve_mapped``). No residency check, no checksum (``verify``: use
        ``get``)."""
        if layer not in self._mapped_layers:
            raise ValueError(f"layer {layer} is not served from its mapping (serve_mapped)")
        L = self.layout.layers[layer]
        self._check(layer, experts)
        spans = [(L.offsets[e], L.sizes[e]) for e in experts]
        n = sum(size for _, size in spans)
        with self._stats_lock:
            s = self._s
            s["bytes_read"] += n
            s["page_cache_bytes"] += n
            s["reads"] += len(spans)
            s["zero_copy_reads"] += len(spans)
            s["cache_misses"] += len(spans)
            s["gets"] += 1
        return spans

    def _map(self, layer: int, fd: int):
        """(read-only mapping of the layer's file, its address), made once."""
        got = self._maps.get(layer)
        if got is None:
            with self._map_lock:
                got = self._maps.get(layer)
                if got is None:
                    m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
                    got = self._maps[layer] = (m, np.frombuffer(m, np.uint8).ctypes.data)
        return got

    def is_mapped(self, layer: int, array) -> bool:
        """Whether ``array`` (from ``get``) is a view of the layer file's mapping: its address then always holds that
        expert, so what was prepared from it may be kept (fmoe.engine.moe.StreamedExperts does)."""
        got = self._maps.get(layer)
        if got is None:
            return False
        addr = array.__array_interface__["data"][0]
        return got[1] <= addr < got[1] + len(got[0])

    def _get_mapped(self, layer: int, keys: list) -> list | None:
        """Zero-copy ``get`` when every expert asked for is in the page cache (the common case of a warm model): the
        views of the mapping, kept per expert (the mapping never moves; at most MAPPED_VIEWS), with no cache entry,
        future or eviction pass (about 46 us an expert on the 2-core machine). None when one is not resident: the
        general path then reads it. The same counters as that path's zero-copy hits."""
        L = self.layout.layers[layer]
        m, base = self._map(layer, self._fd(layer))
        uniq = list(dict.fromkeys(keys))
        now, seen = time.monotonic(), self._resident_seen
        if self._seen_drops != osio.drops():       # this process evicted files since: ask about every expert again
            seen.clear()
            self._seen_drops = osio.drops()
        for key in uniq:
            if now - seen.get(key, -1e18) < self.resident_recheck_s:   # found resident moments ago (see above)
                continue
            off, size = L.offsets[key[1]], L.sizes[key[1]]
            if off + size > len(m) or osio.pages_resident(base + off, size, samples=4) is not True:
                return None
            seen[key] = now
        t0 = time.perf_counter()
        used = 0
        with self._lock:
            for key in uniq:
                self._touch_freq(key)
                if key in self._hinted:
                    self._hinted.discard(key)
                    used += 1
        found = {key: self._mapped_views(key, m) for key in uniq}
        self._count_mapped(uniq, t0)
        with self._stats_lock:
            self._s["cache_misses"] += len(uniq)
            self._s["prefetch_used"] += used
            self._s["gets"] += 1
        return [found[key] for key in keys]

    def _mapped_views(self, key: tuple[int, int], m: mmap.mmap) -> tuple:
        """The expert's (gate, up, down) as views of its layer file's mapping, kept (the mapping never moves; at most
        MAPPED_VIEWS); the first time, its page tables filled in one call."""
        L = self.layout.layers[key[0]]
        with self._lock:
            w = self._views.get(key)
            if w is not None:
                self._views.move_to_end(key)
                return w
            off = L.offsets[key[1]]
            if key not in self._populated:
                _populate(m, off, L.sizes[key[1]])
                self._populated.add(key)
            w = self._views[key] = tuple(L.template.views(m, base=off))
            if len(self._views) > MAPPED_VIEWS:
                self._views.popitem(last=False)
            return w

    def _count_mapped(self, keys: list, t0: float) -> None:
        """Counters of zero-copy reads: bytes served by the page cache, except what a read-ahead hint had to bring
        in from the disk for them (as ``_read`` counts it)."""
        n = sum(self.layout.layers[layer].sizes[e] for layer, e in keys)
        with self._stats_lock:
            s = self._s
            hinted = min(n, sum(self._hint_missing.pop(key, 0) for key in keys))
            s["bytes_read"] += n
            s["disk_bytes"] += hinted
            s["page_cache_bytes"] += n - hinted
            s["reads"] += len(keys)
            s["zero_copy_reads"] += len(keys)
            s["read_s"] += time.perf_counter() - t0

    def _mapped(self, ent: _Entry, fd: int, off: int, size: int, where: str, t0: float):
        layer = ent.key[0]
        m = self._map(layer, fd)[0]
        L = self.layout.layers[layer]
        if self.verify:
            crc = zlib.crc32(memoryview(m)[off:off + size])
            if crc != L.crcs[ent.key[1]]:
                raise ChecksumError(f"checksum mismatch in {where}: crc32 {crc:08x}, manifest "
                                    f"{L.crcs[ent.key[1]]:08x}", layer=layer, expert=ent.key[1], file=str(L.file),
                                    offset=off)
        weights = self._mapped_views(ent.key, m)
        self._count_mapped([ent.key], t0)
        return weights

    def get(self, layer: int, experts: Sequence[int]):
        """Blocking: ``[(gate, up, down), ...]`` for ``experts`` of ``layer``, in the same order."""
        keys = self._check(layer, experts)
        if not self.verify and self._zero_copy(layer):
            got = self._get_mapped(layer, keys)
            if got is not None:
                return got
        hits = misses = pused = phits = 0
        entries: list[_Entry] = []
        deferred: list | None = [] if self._zero_copy(layer) else None
        with self._lock:
            self._recycle_locked()
            uniq: dict[tuple[int, int], _Entry] = {}
            for key in keys:
                ent = uniq.get(key)
                if ent is None:
                    self._touch_freq(key)
                    ent = self._cache.get(key)
                    if ent is None:
                        misses += 1
                        if key in self._hinted:
                            self._hinted.discard(key)
                            pused += 1
                        ent = self._add_locked(key, prefetched=False, deferred=deferred)
                    else:
                        hits += 1
                        self._cache.move_to_end(key)
                        if ent.prefetched and not ent.used:
                            pused += 1
                            phits += 1
                    ent.used = True
                    ent.pins += 1
                    uniq[key] = ent
                entries.append(ent)
        if deferred:
            self._start_deferred(deferred)
        t0 = time.perf_counter()
        results, error = [], None
        for ent in entries:
            try:
                results.append(ent.future.result())
            except ExpertReadError as ex:
                error = error or ex
            except Exception as ex:  # anything unexpected from the I/O thread: still name the expert
                L = self.layout.layers[ent.key[0]]
                error = error or ExpertReadError(
                    f"reading layer {ent.key[0]} expert {ent.key[1]} ({L.file}, offset {L.offsets[ent.key[1]]}) "
                    f"failed: {ex!r}", layer=ent.key[0], expert=ent.key[1], file=str(L.file),
                    offset=L.offsets[ent.key[1]])
        wait = time.perf_counter() - t0
        with self._lock:
            for ent in uniq.values():
                ent.pins -= 1
                if ent.future.done() and ent.future.exception() is not None and self._cache.get(ent.key) is ent:
                    del self._cache[ent.key]
                    self._resident -= ent.nbytes
                    self._retire_locked(ent)
            self._evict_locked(self.memory_budget, keep_prefetched=False)
        with self._stats_lock:
            s = self._s
            s["cache_hits"] += hits
            s["cache_misses"] += misses
            s["prefetch_used"] += pused
            s["prefetch_hits"] += phits
            s["io_wait_s"] += wait
            s["gets"] += 1
        if error is not None:
            raise error
        return results

    def clear(self) -> None:
        """Drop every cached expert that is not being read or returned right now."""
        with self._lock:
            saved, self.memory_budget = self.memory_budget, 0
            try:
                self._evict_locked(0, keep_prefetched=False)
            finally:
                self.memory_budget = saved
            self._hinted.clear()

    def close(self, wait: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=wait)
        with self._lock:
            self._cache.clear()
            self._resident = 0
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._maps.clear()      # a mapping lives on while views into it do (closing it would invalidate them)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close(wait=False)
        except Exception:
            pass
