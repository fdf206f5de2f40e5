"""ExpertStore: both modes, budget, prefetch accounting, one read per expert, fault injection."""
from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import pytest

from fmoe.storage import osio

from fmoe.storage import synth as synth_mod
from fmoe.storage.expert_store import ExpertStore
from fmoe.storage.stream_layout import open_streaming
from fmoe.errors import ChecksumError, ExpertReadError

LAYERS, EXPERTS = 3, 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return synth_mod.synth(tmp_path_factory.mktemp("store") / "m", "tiny", layers=LAYERS, experts=EXPERTS,
                           progress=False, fsync=False)


@pytest.fixture
def ck(model):
    c = open_streaming(model)
    yield c
    c.close()


def _same(a, b):
    return all(np.array_equal(getattr(x, p), getattr(y, p)) and x.bits == y.bits
               for x, y in zip(a, b) for p in ("weight", "scales", "biases"))


def _cache_bytes(store: ExpertStore) -> int:
    return sum(e.nbytes for e in store._cache.values())


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_modes_identical_and_budget_respected(ck, mode, policy):
    stride = ck.layout.layers[0].stride
    budget = 3 * stride                               # smaller than one top-4 get: exercises the exception
    rng = np.random.default_rng(1)
    with ck.expert_source(mode=mode, memory_budget=budget, verify=True, io_threads=4, policy=policy) as store:
        for step in range(40):
            layer = int(rng.integers(0, LAYERS))
            experts = [int(x) for x in rng.choice(EXPERTS, size=int(rng.integers(1, 5)), replace=False)]
            if step % 3 == 0:
                store.prefetch((layer + 1) % LAYERS, experts[:2])
            got = store.get(layer, experts)
            assert len(got) == len(experts)
            for e, w in zip(experts, got):
                assert _same(w, ck.expert(layer, e))
            s = store.stats()
            assert s["resident_bytes"] == _cache_bytes(store) <= budget
            # peak: budget, or the experts one get call returns (plus in-flight prefetches admitted in budget)
            assert s["peak_resident_bytes"] <= budget + 4 * stride
        s = store.stats()
        assert s["cache_hits"] + s["cache_misses"] >= 40
        assert s["cache_misses"] <= s["reads"] <= s["cache_misses"] + s["prefetch_issued"]
        assert s["bytes_read"] >= s["reads"] * ck.layout.layers[0].sizes[0]


def test_zero_budget_page_cache_keeps_nothing(ck):
    with ck.expert_source(mode="page-cache") as store:     # default: no engine cache
        store.get(0, [1, 2])
        store.get(0, [1, 2])
        s = store.stats()
        assert s["cache_hits"] == 0 and s["cache_misses"] == 4 and s["resident_bytes"] == 0
        assert s["memory_budget"] == 0


def test_one_read_per_expert_and_zero_copy(ck, monkeypatch):
    calls = []
    real = os.preadv

    def counting(fd, bufs, off, *a):
        calls.append((fd, off, sum(memoryview(b).nbytes for b in bufs)))
        return real(fd, bufs, off, *a)

    monkeypatch.setattr(os, "preadv", counting)
    L = ck.layout.layers[1]
    for mode in ("page-cache", "direct"):
        calls.clear()
        if mode == "page-cache":                            # not in the page cache: read (resident: mapped, below)
            os.sync()
            osio.drop_from_page_cache(L.file)
            fd = os.open(L.file, os.O_RDONLY)
            left = osio.resident_bytes(fd, 0, os.path.getsize(L.file))
            os.close(fd)
            if left:
                pytest.skip(f"the page cache kept {left} bytes of {L.file} after DONTNEED")
        with ck.expert_source(mode=mode, memory_budget=0) as store:
            got = store.get(1, [0, 5, 7, 5])
        assert len(calls) == 3                              # duplicates read once, one read per expert
        assert sorted(c[1] for c in calls) == sorted(L.offsets[e] for e in (0, 5, 7))
        assert all(c[1] % 4096 == 0 for c in calls)
        g, u, d = got[1]
        arrays = [g.weight, g.scales, g.biases, u.weight, u.scales, u.biases, d.weight, d.scales, d.biases]
        base = g.weight.ctypes.data
        assert base % 4096 == 0                             # page-aligned buffer
        for arr, spec in zip(arrays, L.template.arrays):    # views into one buffer, at the template offsets
            assert arr.ctypes.data == base + spec.offset and arr.ctypes.data % 64 == 0
            assert not arr.flags.owndata
        assert got[1] is got[3] or _same(got[1], got[3])


def test_page_cache_hits_are_views_of_the_file_mapping(ck, monkeypatch):
    """Page-cache mode, no engine cache: an expert wholly in the page cache is not copied: its arrays are views of a
    read-only mapping of the layer file, at the expert's offset (counted as zero-copy reads served by the page
    cache); the same bytes as a read."""
    L = ck.layout.layers[2]
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        read = store.get(2, [4])[0]                         # whatever the page cache held: now it holds this
        read = [np.array(a) for q in read for a in (q.weight, q.scales, q.biases)]
        calls = []
        monkeypatch.setattr(os, "preadv", lambda *a: calls.append(a) or 0)
        store.reset_stats()
        got = store.get(2, [4, 6])
        s = store.stats()
    assert not calls and s["zero_copy_reads"] == 2 and s["page_cache_bytes"] == s["bytes_read"] == 2 * L.sizes[4]
    g = got[0][0]
    assert not g.weight.flags.writeable
    start = g.weight.ctypes.data - L.offsets[4] - L.template.arrays[0].offset
    assert start % 4096 == 0                                # the mapping's start: page aligned
    arrays = [a for q in got[0] for a in (q.weight, q.scales, q.biases)]
    for arr, spec, ref in zip(arrays, L.template.arrays, read):
        assert arr.ctypes.data == start + L.offsets[4] + spec.offset
        np.testing.assert_array_equal(arr, ref)


def test_serve_mapped_with_an_allocator(ck):
    """With an allocator set (the CUDA tier's pinned buffers) experts are read into its buffers; once a layer is given
    to ``serve_mapped`` (its mapping registered for DMA), its page-cache-resident experts are views of the mapping
    and only the other layers still use the allocator."""
    import mmap as mmap_mod
    handed = []

    def allocate(n):
        b = mmap_mod.mmap(-1, n)
        handed.append(np.frombuffer(b, np.uint8).ctypes.data)
        return b

    L = ck.layout.layers[1]
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        store.set_allocator(allocate)
        want = [np.array(a) for q in store.get(1, [3])[0] for a in (q.weight, q.scales, q.biases)]
        assert len(handed) == 1 and store.stats()["zero_copy_reads"] == 0
        with open(L.file, "rb") as f:                       # the whole file into the page cache
            f.read()
        assert store.file_resident(1) == pytest.approx(1.0, abs=0.02)
        m, address = store.mapping(1)
        assert len(m) == os.path.getsize(L.file)
        store.serve_mapped(1)
        got = store.get(1, [3])[0]
        arrays = [a for q in got for a in (q.weight, q.scales, q.biases)]
        assert arrays[0].ctypes.data == address + L.offsets[3] + L.template.arrays[0].offset
        for a, ref in zip(arrays, want):
            np.testing.assert_array_equal(a, ref)
        assert len(handed) == 1 and store.stats()["zero_copy_reads"] == 1
        assert store.mapped_spans(1, [3, 5]) == [(L.offsets[3], L.sizes[3]), (L.offsets[5], L.sizes[5])]
        assert store.stats()["zero_copy_reads"] == 3
        with pytest.raises(ValueError, match="layer 2"):
            store.mapped_spans(2, [3])
        other = store.get(2, [3])[0][0].weight              # another layer: still read into the allocator's buffers
        assert other.ctypes.data - ck.layout.layers[2].template.arrays[0].offset in handed
        assert store.stats()["zero_copy_reads"] == 3 and not store.is_mapped(2, other)
    with ck.expert_source(mode="direct", memory_budget=0) as store:
        with pytest.raises(ValueError, match="page-cache"):
            store.serve_mapped(1)


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
def test_prefetch_then_get_counts_prefetch_hits(ck, mode):
    stride = ck.layout.layers[0].stride
    with ck.expert_source(mode=mode, memory_budget=8 * stride) as store:
        store.prefetch(2, [1, 3, 4])
        store.prefetch(2, [1])                              # already in flight: not issued twice
        got = store.get(2, [3, 1, 6])
        for e, w in zip([3, 1, 6], got):
            assert _same(w, ck.expert(2, e))
        deadline = time.monotonic() + 10       # expert 4's prefetch may still be in flight: let it land first
        while store.stats()["reads"] < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        s = store.stats()
        assert s["prefetch_issued"] == 3 and s["prefetch_used"] == 2
        assert s["cache_hits"] == 2 and s["cache_misses"] == 1 and s["reads"] == 4
        store.get(2, [4])
        s = store.stats()
        assert s["prefetch_used"] == 3 and s["cache_hits"] == 3 and s["cache_hit_rate"] == 0.75
        store.get(2, [4])                                   # a plain cache hit, not a second prefetch hit
        assert store.stats()["prefetch_used"] == 3


def test_prefetch_does_not_exceed_budget(ck):
    stride = ck.layout.layers[0].stride
    with ck.expert_source(mode="direct", memory_budget=2 * stride) as store:
        store.prefetch(0, [0, 1, 2, 3])
        s = store.stats()
        assert s["prefetch_issued"] == 2 and s["prefetch_dropped"] == 2 and s["resident_bytes"] <= 2 * stride
        store.get(0, [0, 1])
        assert store.stats()["prefetch_used"] == 2


def test_page_cache_hint_prefetch_counts(ck):
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        store.prefetch(1, [2, 3])
        store.get(1, [2, 3, 4])
        s = store.stats()
        assert s["prefetch_issued"] == 2 and s["prefetch_used"] == 2 and s["resident_bytes"] == 0


def test_concurrent_prefetch_and_get(ck):
    stride = ck.layout.layers[0].stride
    ref = {(l, e): ck.expert(l, e) for l in range(LAYERS) for e in range(EXPERTS)}
    with ck.expert_source(mode="direct", memory_budget=5 * stride, io_threads=3) as store:
        stop = threading.Event()

        def prefetcher():
            r = np.random.default_rng(7)
            while not stop.is_set():
                store.prefetch(int(r.integers(0, LAYERS)), r.choice(EXPERTS, 2, replace=False).tolist())
                time.sleep(0.0002)   # a tight loop would hold the GIL and starve the reader, not test concurrency

        t = threading.Thread(target=prefetcher)
        t.start()
        try:
            rng = np.random.default_rng(3)
            for _ in range(150):
                layer = int(rng.integers(0, LAYERS))
                experts = rng.choice(EXPERTS, 3, replace=False).tolist()
                for e, w in zip(experts, store.get(layer, experts)):
                    assert _same(w, ref[(layer, e)])
        finally:
            stop.set()
            t.join()
        assert store.stats()["resident_bytes"] <= 5 * stride


# ----------------------------------------------------------------------------------------------- faults


def _fresh(tmp_path, layers=2, experts=4):
    return synth_mod.synth(tmp_path / "m", "tiny", layers=layers, experts=experts, progress=False, fsync=False)


def _names_everything(err: ExpertReadError, layer: int, expert: int, file, offset: int):
    msg = str(err)
    assert f"layer {layer}" in msg and f"expert {expert}" in msg and str(file) in msg and f"offset {offset}" in msg
    assert (err.layer, err.expert, err.file, err.offset) == (layer, expert, str(file), offset)


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
def test_truncated_expert_file(tmp_path, mode):
    path = _fresh(tmp_path)
    ck = open_streaming(path)
    L = ck.layout.layers[1]
    os.truncate(L.file, L.offsets[3] + 5000)               # cuts expert 3 of layer 1 short
    with ck.expert_source(mode=mode, memory_budget=0) as store:
        assert store.get(1, [0, 2])                          # others still fine
        with pytest.raises(ExpertReadError, match="short read") as ei:
            store.get(1, [2, 3])
        _names_everything(ei.value, 1, 3, L.file, L.offsets[3])
        store.prefetch(1, [3])                               # a failed prefetch surfaces in get, never dropped
        with pytest.raises(ExpertReadError):
            store.get(1, [3])


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
def test_flipped_byte_checksum(tmp_path, mode):
    path = _fresh(tmp_path)
    ck = open_streaming(path)
    L = ck.layout.layers[0]
    with open(L.file, "r+b") as f:
        pos = L.offsets[2] + 1234
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))
    os.posix_fadvise(os.open(L.file, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
    with ck.expert_source(mode=mode, memory_budget=0, verify=True) as store:
        with pytest.raises(ChecksumError, match="checksum mismatch") as ei:
            store.get(0, [1, 2])
        _names_everything(ei.value, 0, 2, L.file, L.offsets[2])
        assert store.get(0, [1])
    with ck.expert_source(mode=mode, memory_budget=0, verify=False) as store:
        store.get(0, [2])                                    # not verified: no error
    with pytest.raises(ChecksumError):
        open_streaming(path, verify=True).expert(0, 2)


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
def test_io_error_and_short_read_from_reader(ck, monkeypatch, mode):
    L = ck.layout.layers[2]
    real = os.preadv
    state = {"mode": "eio"}

    def faulty(fd, bufs, off, *a):
        if off == L.offsets[5] and state["mode"] == "eio":
            raise OSError(errno.EIO, "Input/output error")
        if off == L.offsets[5] and state["mode"] == "short":
            return real(fd, [memoryview(bufs[0])[:4096]], off) if mode == "direct" else 0
        return real(fd, bufs, off, *a)

    monkeypatch.setattr(os, "preadv", faulty)
    # the read path: an expert wholly in the page cache would be mapped, not read
    monkeypatch.setattr(osio, "resident_bytes", lambda fd, off, n: 0)
    monkeypatch.setattr(osio, "pages_resident", lambda addr, n, samples=16: False)
    with ck.expert_source(mode=mode, memory_budget=0) as store:
        with pytest.raises(ExpertReadError, match="I/O error") as ei:
            store.get(2, [4, 5, 6])
        _names_everything(ei.value, 2, 5, L.file, L.offsets[5])
        state["mode"] = "short"
        with pytest.raises(ExpertReadError, match="short read") as ei:
            store.get(2, [5])
        _names_everything(ei.value, 2, 5, L.file, L.offsets[5])
        state["mode"] = "ok"
        got = store.get(2, [5])                              # the failed entry was not cached
        assert _same(got[0], ck.expert(2, 5))


def test_missing_expert_file(tmp_path):
    path = _fresh(tmp_path)
    ck = open_streaming(path)
    os.unlink(ck.layout.layers[1].file)
    with ck.expert_source() as store:
        with pytest.raises(ExpertReadError, match="missing"):
            store.get(1, [0])


def test_bad_arguments(ck):
    with pytest.raises(ValueError):
        ck.expert_source(mode="mmap")
    with ck.expert_source() as store:
        with pytest.raises(IndexError):
            store.get(0, [EXPERTS])
        with pytest.raises(IndexError):
            store.get(LAYERS, [0])


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
def test_buffers_recycled_but_never_while_held(ck, mode, monkeypatch):
    stride = ck.layout.layers[0].stride
    monkeypatch.setattr(osio, "resident_bytes", lambda fd, off, n: 0)     # read into buffers, never mapped
    monkeypatch.setattr(osio, "pages_resident", lambda addr, n, samples=16: False)
    with ck.expert_source(mode=mode, memory_budget=0 if mode == "page-cache" else 2 * stride) as store:
        held = store.get(0, [1, 2])
        snapshot = [[np.array(getattr(q, p)) for q in t for p in ("weight", "scales", "biases")] for t in held]
        for i in range(60):
            r = store.get(i % LAYERS, [i % EXPERTS, (i + 3) % EXPERTS])
            del r
        s = store.stats()
        assert s["buffers_reused"] > 40 and s["buffers_allocated"] < 12
        for t, snap in zip(held, snapshot):      # the buffers behind `held` were never reused
            assert all(np.array_equal(getattr(q, p), a) for (q, p), a in zip(
                [(q, p) for q in t for p in ("weight", "scales", "biases")], snap))
        for e, t in zip([1, 2], held):
            assert _same(t, ck.expert(0, e))


def test_zero_copy_path_asks_about_residency_once_a_window(ck, monkeypatch):
    """A warm page-cache store asks whether an expert is in the page cache (osio.pages_resident) once per
    RESIDENT_RECHECK_S, not on every get; a file this process evicts (osio.drop_from_page_cache) makes it ask again,
    and FMOE_RESIDENT_RECHECK_S = 0 asks every time. The experts served are the same either way; a bad setting is an
    error naming the variable."""
    from fmoe.errors import ConfigError
    from fmoe.storage import expert_store

    real, asked = osio.pages_resident, []

    def counting(addr, n, samples=16):
        asked.append(addr)
        return real(addr, n, samples)

    monkeypatch.setattr(osio, "pages_resident", counting)
    monkeypatch.delenv("FMOE_RESIDENT_RECHECK_S", raising=False)
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        assert store.resident_recheck_s == expert_store.RESIDENT_RECHECK_S > 0
        store.resident_recheck_s = 60.0                  # a window no slow CI step can outlast
        for _ in range(3):
            for w, e in zip(store.get(1, [2, 3]), (2, 3)):
                assert _same(w, ck.expert(1, e))
        if not asked or store.get(1, [2, 3]) is None:
            pytest.skip("pages_resident cannot be asked on this OS")
        assert len(asked) == 2                           # experts 2 and 3, once each
        osio.drop_from_page_cache(ck.layout.layers[1].file)
        got = store.get(1, [2, 3])
        assert len(asked) >= 3 and all(_same(w, ck.expert(1, e)) for w, e in zip(got, (2, 3)))
    monkeypatch.setenv("FMOE_RESIDENT_RECHECK_S", "0")
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        store.get(0, [1])
        store.get(0, [1])                                # warm now: the zero-copy path, asked each time
        before = len(asked)
        store.get(0, [1])
        assert len(asked) == before + 1
    monkeypatch.setenv("FMOE_RESIDENT_RECHECK_S", "soon")
    with pytest.raises(ConfigError, match="FMOE_RESIDENT_RECHECK_S"):
        ck.expert_source(mode="page-cache", memory_budget=0)


def test_a_hint_that_ends_after_its_get_leaves_nothing_to_count(ck):
    """A read-ahead hint runs on an I/O thread: when its expert's get has already taken it (the get counted what it
    read), the bytes the hint found missing are not kept, or a later get (a later generation) would count them as
    disk bytes of its own; a hint whose expert is still to come keeps them for that get."""
    L = ck.layout.layers[1]
    with ck.expert_source(mode="page-cache", memory_budget=0) as store:
        osio.drop_from_page_cache(L.file)
        store._hinted.add((1, 2))                     # as prefetch() marks it
        store.get(1, [2])                             # the get takes it
        store._hint(1, 2)                             # ... and the hint's thread runs late
        assert (1, 2) not in store._hint_missing
        osio.drop_from_page_cache(L.file)
        store._hinted.add((1, 3))
        store._hint(1, 3)                             # the hint before its get
        if osio.resident_bytes(store._fd(1), L.offsets[3], L.sizes[3]) is None:
            pytest.skip("no mincore here: hints record nothing")
        assert (1, 3) in store._hint_missing
        store.get(1, [3])
        assert (1, 3) not in store._hint_missing
