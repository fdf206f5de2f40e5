"""Portable I/O (issue 16, item 14: macOS has no os.O_DIRECT nor os.posix_fadvise) and page-cache accounting
(item 10: bytes from the disk vs page-cache hits), simulated on Linux."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from fmoe.storage import osio
from fmoe.storage import synth as synth_mod
from fmoe.storage.expert_store import ExpertStore
from fmoe.storage.stream_layout import open_streaming


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return synth_mod.synth(tmp_path_factory.mktemp("pio") / "m", "tiny", layers=2, experts=8, progress=False,
                           fsync=False)


def _same(a, b):
    return all(np.array_equal(getattr(x, p), getattr(y, p)) for x, y in zip(a, b) for p in ("weight", "scales"))


def _no_linux_io(monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    monkeypatch.delattr(os, "posix_fadvise", raising=False)


@pytest.mark.parametrize("mode", ["direct", "page-cache"])
def test_store_works_without_o_direct_and_fadvise(model, monkeypatch, mode):
    _no_linux_io(monkeypatch)
    assert osio.uncached_kind() == "none"
    ck = open_streaming(model)
    with ExpertStore(ck.layout, mode=mode, memory_budget=0 if mode == "page-cache" else 1 << 20) as st:
        st.prefetch(1, [0, 3, 5])                     # page-cache: hints, which have no OS call here
        got = st.get(1, [0, 3, 5])
        assert all(_same(g, ck.expert(1, e)) for g, e in zip(got, [0, 3, 5]))
        st._pool.submit(lambda: None).result()        # hints done
        assert st.stats()["hint_errors"] == 0
    assert not osio.drop_from_page_cache(ck.layout.layers[0].file)


def test_darwin_uses_f_nocache_and_f_rdadvise(model, monkeypatch):
    import fcntl
    _no_linux_io(monkeypatch)
    monkeypatch.setattr(sys, "platform", "darwin")
    calls = []
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd, arg=0: calls.append((cmd, arg)) or 0)
    assert osio.uncached_kind() == "F_NOCACHE"
    ck = open_streaming(model)
    with ExpertStore(ck.layout, mode="direct", memory_budget=1 << 20) as st:
        assert _same(st.get(0, [2])[0], ck.expert(0, 2))
    assert (getattr(fcntl, "F_NOCACHE", 48), 1) in calls
    with ExpertStore(ck.layout, mode="page-cache", memory_budget=0) as st:
        st.prefetch(0, [4])
        st._pool.submit(lambda: None).result()
        st.get(0, [4])
        assert st.stats()["hint_errors"] == 0
    L = ck.layout.layers[0]
    adv = [a for c, a in calls if c == getattr(fcntl, "F_RDADVISE", 44)]
    assert adv and adv[0][:8] == L.offsets[4].to_bytes(8, sys.byteorder)


def test_failed_hint_is_counted_not_lost(model, monkeypatch):
    def boom(*a):
        raise OSError(22, "no hint for you")
    monkeypatch.setattr(os, "posix_fadvise", boom)
    ck = open_streaming(model)
    with ExpertStore(ck.layout, mode="page-cache", memory_budget=0) as st:
        st.prefetch(0, [1, 2])
        st.get(0, [1, 2])
        for _ in range(200):                           # the hints run on the I/O threads
            if st.stats()["hint_errors"] == 2:
                break
            time.sleep(0.01)
        assert st.stats()["hint_errors"] == 2


def test_page_cache_reads_split_disk_and_cache(model):
    ck = open_streaming(model)
    L = ck.layout.layers[1]
    assert osio.drop_from_page_cache(L.file)
    with ExpertStore(ck.layout, mode="page-cache", memory_budget=0) as st:
        st.get(1, [0])
        s1 = st.stats()
        assert s1["disk_bytes"] > 0 and s1["disk_bytes"] + s1["page_cache_bytes"] == s1["bytes_read"]
        st.get(1, [0])                                # now in the page cache
        s2 = st.stats()
        assert s2["disk_bytes"] == s1["disk_bytes"]
        assert s2["page_cache_bytes"] - s1["page_cache_bytes"] == L.sizes[0]
        assert 0 < s2["page_cache_hit_rate"] < 1
    with ExpertStore(ck.layout, mode="direct", memory_budget=0) as st:
        st.get(1, [0])
        s = st.stats()
        assert s["disk_bytes"] == s["bytes_read"] and s["page_cache_hit_rate"] == 0


def test_pages_resident_samples_a_mapping(tmp_path):
    """``pages_resident``: True for a file just written and read (in the page cache), False once it is evicted,
    agreeing with the full ``resident_bytes`` count; None for nothing to ask about."""
    import mmap as mmap_mod

    f = tmp_path / "data.bin"
    f.write_bytes(np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes())
    fd = os.open(f, os.O_RDONLY)
    try:
        os.read(fd, 8 << 20)
        m = mmap_mod.mmap(fd, 0, prot=mmap_mod.PROT_READ)
        addr = np.frombuffer(m, np.uint8).ctypes.data
        assert osio.pages_resident(addr + 4096, 6 << 20) is True
        assert osio.pages_resident(addr, 0) is None
        os.fsync(fd)
        osio.drop_from_page_cache(f)
        full = osio.resident_bytes(fd, 0, 8 << 20)
        if full:
            pytest.skip(f"the page cache kept {full} bytes after DONTNEED")
        assert osio.pages_resident(addr + 4096, 6 << 20) is False
    finally:
        os.close(fd)
