"""Hugging Face model ids resolved from a local cache (fmoe/storage/hf_cache.py), offline, on a fake cache layout."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fmoe.errors import FmoeError
from fmoe.storage.hf_cache import hub_cache_dir, looks_like_repo_id, resolve_hf_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import build_hf

    d = tmp_path_factory.mktemp("tiny") / "model"
    build_hf(d)
    return d


def fake_cache(root: Path, tiny: Path, repo: str = "TinyOrg/tiny-moe", rev: str = "abc") -> Path:
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(tiny, repo_dir / "snapshots" / rev)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(rev)
    return repo_dir / "snapshots" / rev


def test_repo_id_detection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_repo_id("Qwen/Qwen3.5-35B-A3B") and looks_like_repo_id("Qwen/Qwen3.5-35B-A3B@main")
    for s in ("model", "./a/b", "/abs/path", "~/x/y", "a/b/c", "../a"):
        assert not looks_like_repo_id(s), s
    (tmp_path / "Org" / "name").mkdir(parents=True)
    assert not looks_like_repo_id("Org/name")   # an existing path stays a path


def test_cache_dir_env(monkeypatch, tmp_path):
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_cache_dir() == tmp_path / "hub"


def test_resolve_model_from_cache_and_load(tmp_path, monkeypatch, tiny):
    from fmoe.engine.loader import load, resolve_model

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = fake_cache(tmp_path / "hf" / "hub", tiny)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("TinyOrg/tiny-moe") == snap
    assert resolve_model("TinyOrg/tiny-moe@abc") == snap
    model, tok = load("TinyOrg/tiny-moe")
    assert model.cfg.num_experts == 8 and tok.vocab_size > 0


def test_revision_and_missing(tmp_path, monkeypatch, tiny):
    from fmoe.engine.loader import resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FmoeError) as e:
        resolve_model("Qwen/Qwen3.5-35B-A3B")
    msg = str(e.value)
    assert "'Qwen/Qwen3.5-35B-A3B' is neither a directory nor in the Hugging Face cache" in msg
    assert "hf download Qwen/Qwen3.5-35B-A3B" in msg and "huggingface-cli download Qwen/Qwen3.5-35B-A3B" in msg
    snap = fake_cache(tmp_path / "hub", tiny, rev="abc1234")
    (snap.parents[1] / "refs" / "main").unlink()      # no refs/main: the only snapshot
    assert resolve_hf_model("TinyOrg/tiny-moe") == snap
    assert resolve_hf_model("TinyOrg/tiny-moe@abc1") == snap     # a commit prefix
    with pytest.raises(FmoeError, match="revision 'zzz' is not in the Hugging Face cache.*--revision zzz"):
        resolve_hf_model("TinyOrg/tiny-moe@zzz")
    (snap / "config.json").unlink()
    with pytest.raises(FmoeError, match="has no config.json"):
        resolve_hf_model("TinyOrg/tiny-moe")


def test_task_file_model_id(tmp_path, monkeypatch, tiny):
    from fmoe.agent.taskfile import load_task
    from fmoe.engine.loader import resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = fake_cache(tmp_path / "hub", tiny)
    (tmp_path / "t").mkdir()
    p = tmp_path / "t" / "task.yaml"
    p.write_text("model: TinyOrg/tiny-moe\ntask: hi\n")
    t = load_task(p)
    assert t.model_ref == "TinyOrg/tiny-moe" and resolve_model(t.model_ref) == snap
    (tmp_path / "t" / "TinyOrg" / "tiny-moe").mkdir(parents=True)   # a folder beside the task file wins
    assert load_task(p).model_ref == tmp_path / "t" / "TinyOrg" / "tiny-moe"
