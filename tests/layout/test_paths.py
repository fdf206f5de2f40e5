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


def test_qwen_vocabulary_cache_follows_the_rule(monkeypatch, tmp_path):
    """fmoe.structured.qwen_vocab caches its built tokenizer.json under cache_dir() (no rule of its own)."""
    from fmoe.structured import qwen_vocab

    vocab = tmp_path / "qwen3_6.tiktoken"
    vocab.write_bytes(b"IQ== 0\n")
    monkeypatch.setattr(qwen_vocab, "_tiktoken_file", lambda: vocab)
    monkeypatch.setenv("FMOE_CACHE_DIR", str(tmp_path / "own"))
    p = qwen_vocab._cache_path()
    assert p.parent == tmp_path / "own" == cache_dir() and p.name.startswith("qwen3_5_tokenizer_")
    monkeypatch.delenv("FMOE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert qwen_vocab._cache_path().parent == tmp_path / "xdg" / "fmoe"
    monkeypatch.setattr("fmoe.paths.cache_dir", lambda *parts: tmp_path.joinpath("patched", *parts))
    assert qwen_vocab._cache_path().parent == tmp_path / "patched"     # it calls fmoe.paths.cache_dir
