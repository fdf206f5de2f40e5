"""The converted-variant cache key (fmoe.engine.loader.content_digest) covers every weight shard (issue 16, item 9)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

from fmoe.engine.loader import content_digest


def _sharded(d, shard2: dict, mtime: int = 1_700_000_000):
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3_5_moe_text"}))
    (d / "tokenizer.json").write_text("{}")
    save_file({"a": np.zeros((4, 4), np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    save_file(shard2, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    for p in d.iterdir():
        os.utime(p, ns=(mtime * 10**9, mtime * 10**9))
    return d


def test_sharded_checkpoints_differing_in_a_shard_get_different_keys(tmp_path):
    a = _sharded(tmp_path / "a", {"b": np.zeros((8, 4), np.float32)})
    b = _sharded(tmp_path / "b", {"b": np.zeros((4, 8), np.float32)})          # another header
    c = _sharded(tmp_path / "c", {"b": np.ones((8, 4), np.float32)})           # same header and size ...
    os.utime(c / "model-00002-of-00002.safetensors", ns=(1_700_000_001 * 10**9,) * 2)   # ... written later
    same = tmp_path / "same"
    shutil.copytree(a, same)
    for p in same.iterdir():
        os.utime(p, ns=(1_700_000_000 * 10**9,) * 2)
    keys = {content_digest(x) for x in (a, b, c)}
    assert len(keys) == 3
    assert content_digest(same) == content_digest(a)


def test_single_file_key_unchanged(tmp_path):
    """A single-file checkpoint keys on its files' bytes, as before (cached variants of the demo stay valid)."""
    import hashlib
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    save_file({"a": np.zeros(3, np.float32)}, str(d / "model.safetensors"))
    h = hashlib.sha256((d / "config.json").read_bytes() + (d / "model.safetensors").read_bytes())
    assert content_digest(d) == h.hexdigest()[:12]


def _convert_worker(src, cache, barrier, inside, out):
    os.environ["FMOE_CACHE_DIR"] = cache
    import threading

    from fmoe.engine.loader import quantized_variant
    from fmoe.storage import convert as convert_mod
    from fmoe.storage.stream_layout import verify_layout

    real = convert_mod.convert

    def convert(*a, **k):       # hold the race window open: wait (up to 5 s) for the other process to start converting
        try:
            inside.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass                # it did not come (it is waiting for the lock): convert alone
        return real(*a, **k)

    convert_mod.convert = convert
    barrier.wait()
    try:
        dst = quantized_variant(src, 4, quiet=True)
        ino = os.stat(dst).st_ino
        verify_layout(dst)                          # loadable: every expert and tensor reads back
        out.put((str(dst), ino, None))
    except Exception as e:                          # reported to the parent
        out.put((None, None, f"{type(e).__name__}: {e}"))


def test_two_first_time_loads_do_not_delete_each_others_conversion(tmp_path):
    """Two processes convert the same checkpoint into the same cache at once: one converts (under a lock on
    <dst>.lock), the other waits and finds its manifest; before, the second finish() renamed the first's finished
    folder away and removed it."""
    import multiprocessing as mp

    from fmoe.storage import synth as synth_mod
    from fmoe.storage.stream_layout import verify_layout

    src = synth_mod.synth(tmp_path / "src", "tiny", layers=2, experts=8, progress=False, fsync=False)
    cache = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    barrier, inside, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_convert_worker, args=(str(src), cache, barrier, inside, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(err is None for _, _, err in results), results
    (d1, i1, _), (d2, i2, _) = results
    assert d1 == d2
    assert i1 == i2 == os.stat(d1).st_ino            # the same folder: neither replaced the other's
    verify_layout(d1)
    leftovers = [p.name for p in (tmp_path / "cache" / "variants").iterdir()
                 if p.name != os.path.basename(d1) and not p.name.endswith(".lock")]
    assert leftovers == []
