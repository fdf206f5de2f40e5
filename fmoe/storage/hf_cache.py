"""Hugging Face model ids (``Qwen/Qwen3.5-35B-A3B``) resolved from the local Hugging Face cache, offline.

    looks_like_repo_id("Qwen/Qwen3.5-35B-A3B")       # True: ORG/NAME, one slash, not an existing path
    hub_cache_dir()                                  # $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    resolve_hf_model("Qwen/Qwen3.5-35B-A3B")         # .../models--Qwen--Qwen3.5-35B-A3B/snapshots/<rev>
    resolve_hf_model("Qwen/Qwen3.5-35B-A3B@abc123")  # a revision: a ref name (refs/<name>) or a commit (prefix)

The layout is huggingface_hub's: ``models--ORG--NAME/refs/main`` holds the commit of the main branch and
``snapshots/<commit>/`` its files. Nothing is downloaded: a model missing from the cache is an FmoeError that says
how to download it. (With no refs/main, e.g. a cache filled with ``--revision``, the only snapshot, or the newest.)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from fmoe.errors import FmoeError

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}(@[\w./-]+)?$")


def looks_like_repo_id(spec: str | os.PathLike) -> bool:
    """``ORG/NAME`` (optionally ``@REVISION``): one slash, no leading ./ ~ or /, and no such path on disk."""
    s = str(spec)
    if not REPO_ID_RE.match(s) or s.startswith((".", "~")) or ".." in s:
        return False
    return not Path(s).expanduser().exists()


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps models: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    (with $XDG_CACHE_HOME: $XDG_CACHE_HOME/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _download_hint(repo_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"download it first: `hf download {repo_id}{rev}` (or `huggingface-cli download {repo_id}{rev}`), "
            f"or pass a model directory")


def resolve_hf_model(spec: str, cache: str | os.PathLike | None = None) -> Path:
    """The snapshot directory of ``ORG/NAME[@REVISION]`` in the local Hugging Face cache (offline)."""
    repo_id, _, revision = str(spec).partition("@")
    revision = revision or None
    root = Path(cache) if cache is not None else hub_cache_dir()
    repo = root / ("models--" + repo_id.replace("/", "--"))
    where = f"the Hugging Face cache ({root})"
    if not repo.is_dir():
        raise FmoeError(f"model {repo_id!r} is neither a directory nor in {where}: {_download_hint(repo_id, revision)}")
    snaps = repo / "snapshots"
    ref_name = revision or "main"
    ref = repo / "refs" / ref_name
    commit = None
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    elif revision is not None:
        matches = sorted(p for p in snaps.glob(f"{revision}*") if p.is_dir()) if snaps.is_dir() else []
        if len(matches) == 1:
            commit = matches[0].name
        elif len(matches) > 1:
            raise FmoeError(f"model {repo_id!r}: revision {revision!r} is ambiguous in {where} "
                            f"({', '.join(p.name[:12] for p in matches)})")
        else:
            raise FmoeError(f"model {repo_id!r}: revision {revision!r} is not in {where}: "
                            f"{_download_hint(repo_id, revision)}")
    else:
        found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) \
            if snaps.is_dir() else []
        if not found:
            raise FmoeError(f"model {repo_id!r}: no snapshot in {where} (an interrupted download?): "
                            f"{_download_hint(repo_id, revision)}")
        commit = found[-1].name
    path = snaps / commit
    if not path.is_dir():
        raise FmoeError(f"model {repo_id!r}: refs/{ref_name} names snapshot {commit[:12]} but {path} is missing "
                        f"(an interrupted download?): {_download_hint(repo_id, revision)}")
    if not (path / "config.json").exists() and not (path / "manifest.json").exists():
        raise FmoeError(f"model {repo_id!r}: the cached snapshot {path} has no config.json (only part of the "
                        f"model was downloaded?): {_download_hint(repo_id, revision)}")
    return path
