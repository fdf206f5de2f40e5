"""One cache-directory rule (fmoe.paths.cache_dir) for kernels and converted models."""
from pathlib import Path

from fmoe.kernels import native
from fmoe.paths import cache_dir


def test_cache_dir_rule(monkeypatch, tmp_path):
    monkeypatch.delenv("FMOE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fmoe"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("variants") == tmp_path / "xdg" / "fmoe" / "variants"
    assert native.cache_dir() == tmp_path / "xdg" / "fmoe" / "kernels"
    monkeypatch.setenv("FMOE_CACHE_DIR", str(tmp_path / "own"))
    assert cache_dir() == Path(tmp_path / "own") and native.cache_dir() == tmp_path / "own" / "kernels"
