"""fmoe convert (issue 16, item 16): an interrupted convert's temporary folder never lingers into the next run, the
free-space check counts what --force replaces, --verify checks expert and non-expert checksums."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from fmoe.cli import convert as cli_convert
from fmoe.errors import ChecksumError, LayoutError
from fmoe.storage import convert as convert_mod
from fmoe.storage.checkpoint import open_checkpoint
from fmoe.storage.stream_layout import OWNER_FILE, is_streaming_layout, verify_layout


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_rerun_removes_what_a_killed_convert_left(hf_dir, tmp_path):
    dead = tmp_path / "x.tmp-dead01"
    (dead / "experts").mkdir(parents=True)
    (dead / OWNER_FILE).write_text(f"{_dead_pid()}\n")
    (dead / "experts" / "layer_000.bin").write_bytes(b"\0" * 4096)
    legacy = tmp_path / "x.tmp-legacy"                    # left by a version that wrote no owner file
    legacy.mkdir()
    alive = tmp_path / "x.tmp-alive1"                     # another convert, still running
    alive.mkdir()
    (alive / OWNER_FILE).write_text(f"{os.getppid()}\n")
    convert_mod.convert(hf_dir, tmp_path / "x", progress=False, fsync=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "x.tmp-alive1"]
    assert is_streaming_layout(tmp_path / "x") and not (tmp_path / "x" / OWNER_FILE).exists()


def test_free_space_check_counts_what_force_replaces(hf_dir, tmp_path, monkeypatch):
    dst = convert_mod.convert(hf_dir, tmp_path / "x", progress=False, fsync=False)
    need = convert_mod.estimate_output_bytes(open_checkpoint(hf_dir).config, 4, 64)
    Usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * need, 9 * need, int(need * 0.6)))
    with pytest.raises(LayoutError, match="already exists"):
        convert_mod.convert(hf_dir, dst, progress=False, fsync=False)
    out = convert_mod.convert(hf_dir, dst, overwrite=True, progress=False, fsync=False)   # the old one makes room
    assert is_streaming_layout(out) and [p.name for p in tmp_path.iterdir()] == ["x"]
    for f in (dst / "experts").iterdir():                         # an old DST too small to make room
        os.truncate(f, 0)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * need, 9 * need, 1000))
    with pytest.raises(LayoutError, match="not enough free space"):
        convert_mod.convert(hf_dir, dst, overwrite=True, progress=False, fsync=False)
    assert is_streaming_layout(dst)                               # refused before touching anything


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_checks_expert_and_non_expert_checksums(hf_dir, tmp_path, capsys):
    dst = tmp_path / "x"
    assert cli_convert.main([str(hf_dir), str(dst), "--verify"]) == 0
    assert "verified" in capsys.readouterr().err
    counts = verify_layout(dst)
    assert counts["experts"] == 4 * 6 and counts["non_expert_tensors"] > 10
    ne = dst / "non_expert.safetensors"
    (n,) = struct.unpack("<Q", ne.read_bytes()[:8])
    hdr = json.loads(ne.read_bytes()[8:8 + n])
    name = "norm.weight"
    _flip(ne, 8 + n + hdr[name]["data_offsets"][0])
    with pytest.raises(ChecksumError, match="norm.weight"):
        verify_layout(dst)
    _flip(ne, 8 + n + hdr[name]["data_offsets"][0])
    verify_layout(dst)
    _flip(dst / "experts" / "layer_002.bin", 5)
    with pytest.raises(ChecksumError, match="layer 2 expert 0"):
        verify_layout(dst)
