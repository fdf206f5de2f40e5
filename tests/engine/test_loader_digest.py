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
