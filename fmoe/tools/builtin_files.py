"""Built-in workspace file tools: list_files, read_file, write_file, search_files, confined to one directory.

    tools = workspace_tools("/path/to/workspace")     # -> [list_files, read_file, write_file, search_files]

Every path is resolved (symlinks included) and must stay inside the workspace: ``../`` escapes, absolute paths
elsewhere and symlinks pointing out are refused. Reads and writes have size limits.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from fmoe.errors import WorkspaceError
from fmoe.tools.base import Tool, human_size
from fmoe.tools.decorator import tool

DEFAULT_MAX_READ = 1024 * 1024       # bytes a read_file / search_files may read from one file
DEFAULT_MAX_WRITE = 1024 * 1024      # bytes write_file may write
MAX_LIST_ENTRIES = 1000
MAX_SEARCH_MATCHES = 200
MAX_MATCH_LINE = 300                 # characters of a matching line shown


class Workspace:
    """A directory the file tools are confined to."""

    def __init__(self, root: str | os.PathLike, *, max_read: int = DEFAULT_MAX_READ,
                 max_write: int = DEFAULT_MAX_WRITE, create: bool = False):
        root_path = Path(root).expanduser()
        if create:
            root_path.mkdir(parents=True, exist_ok=True)
        if not root_path.is_dir():
            raise WorkspaceError(f"workspace directory does not exist: {root_path}")
        self.root = Path(os.path.realpath(root_path))
        self.max_read = max_read
        self.max_write = max_write

    def resolve(self, path: str) -> Path:
        """The real path of ``path`` (relative to the root, or absolute), refused if it leaves the workspace."""
        if not isinstance(path, str) or "\x00" in path:
            raise WorkspaceError("invalid path")
        p = Path(path.strip() or ".")
        candidate = p if p.is_absolute() else self.root / p
        real = Path(os.path.realpath(candidate))
        if real != self.root and self.root not in real.parents:
            raise WorkspaceError(f"path {path!r} is outside the workspace")
        return real

    def rel(self, real: Path) -> str:
        r = real.relative_to(self.root).as_posix()
        return r or "."

    def inside(self, real: Path) -> bool:
        try:
            target = Path(os.path.realpath(real))
        except OSError:
            return False
        return target == self.root or self.root in target.parents


def _read_text(ws: Workspace, real: Path, shown: str) -> str:
    size = real.stat().st_size
    if size > ws.max_read:
        raise WorkspaceError(f"{shown} is {human_size(size)}, over the read limit of {human_size(ws.max_read)}")
    data = real.read_bytes()
    if b"\x00" in data[:8192]:
        raise WorkspaceError(f"{shown} looks like a binary file")
    return data.decode("utf-8", errors="replace")


def workspace_tools(root: str | os.PathLike, *, max_read: int = DEFAULT_MAX_READ,
                    max_write: int = DEFAULT_MAX_WRITE, read_only: bool = False,
                    create: bool = False) -> list[Tool]:
    """The file tools for one workspace directory (``read_only`` leaves out write_file)."""
    ws = Workspace(root, max_read=max_read, max_write=max_write, create=create)

    @tool
    def list_files(path: str = ".", recursive: bool = False) -> str:
        """List the files and directories in a workspace directory.

        Args:
            path: Directory relative to the workspace root.
            recursive: Also list the contents of subdirectories.
        """
        real = ws.resolve(path)
        if not real.exists():
            raise WorkspaceError(f"no such directory: {path}")
        if not real.is_dir():
            raise WorkspaceError(f"not a directory: {path}")
        lines: list[str] = []
        more = False
        walker = sorted(real.rglob("*")) if recursive else sorted(real.iterdir())
        for entry in walker:
            if len(lines) >= MAX_LIST_ENTRIES:
                more = True
                break
            if recursive and not ws.inside(entry.parent):
                continue  # below a symlinked directory that points out of the workspace
            rel = entry.relative_to(ws.root).as_posix()
            if entry.is_symlink() and not ws.inside(entry):
                lines.append(f"{rel} -> (outside the workspace)")
            elif entry.is_dir():
                lines.append(f"{rel}/")
            else:
                try:
                    lines.append(f"{rel}  ({human_size(entry.stat().st_size)})")
                except OSError:
                    lines.append(rel)
        if more:
            lines.append(f"... (more than {MAX_LIST_ENTRIES} entries)")
        return "\n".join(lines) if lines else f"(empty directory: {ws.rel(real)})"

    @tool
    def read_file(path: str) -> str:
        """Read a text file from the workspace.

        Args:
            path: File path relative to the workspace root.
        """
        real = ws.resolve(path)
        if not real.is_file():
            raise WorkspaceError(f"no such file: {path}" if not real.exists() else f"not a file: {path}")
        return _read_text(ws, real, path)

    @tool
    def write_file(path: str, content: str) -> str:
        """Write a text file in the workspace, replacing it if it exists (parent directories are created).

        Args:
            path: File path relative to the workspace root.
            content: The complete new content of the file.
        """
        data = content.encode("utf-8")
        if len(data) > ws.max_write:
            raise WorkspaceError(f"content is {human_size(len(data))}, over the write limit of "
                                 f"{human_size(ws.max_write)}")
        real = ws.resolve(path)
        if real.is_dir():
            raise WorkspaceError(f"is a directory: {path}")
        real.parent.mkdir(parents=True, exist_ok=True)
        ws.resolve(str(real.parent))  # the parents just made are inside too (re-checked after mkdir)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(real, flags, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return f"wrote {len(data)} bytes to {ws.rel(real)}"

    @tool
    def search_files(pattern: str, path: str = ".", regex: bool = False) -> str:
        """Search the text files under a workspace directory for a string; returns `file:line: text` lines.

        Args:
            pattern: Text to look for (a regular expression if regex is true).
            path: File or directory to search, relative to the workspace root.
            regex: Treat pattern as a Python regular expression.
        """
        if not pattern:
            raise WorkspaceError("empty pattern")
        if regex:
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise WorkspaceError(f"invalid regular expression: {e}") from None
            match = rx.search
        else:
            def match(line: str) -> bool:
                return pattern in line
        real = ws.resolve(path)
        if not real.exists():
            raise WorkspaceError(f"no such file or directory: {path}")
        files = [real] if real.is_file() else sorted(p for p in real.rglob("*") if p.is_file())
        out: list[str] = []
        for f in files:
            if not ws.inside(f) or f.stat().st_size > ws.max_read:
                continue
            data = f.read_bytes()
            if b"\x00" in data[:8192]:
                continue
            rel = f.relative_to(ws.root).as_posix() if ws.root in f.parents else ws.rel(Path(os.path.realpath(f)))
            for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if match(line):
                    text = line.strip()
                    if len(text) > MAX_MATCH_LINE:
                        text = text[:MAX_MATCH_LINE] + "…"
                    out.append(f"{rel}:{n}: {text}")
                    if len(out) >= MAX_SEARCH_MATCHES:
                        out.append(f"... (stopped after {MAX_SEARCH_MATCHES} matches)")
                        return "\n".join(out)
        return "\n".join(out) if out else "no matches"

    tools: list[Tool] = [list_files, read_file, search_files]
    if not read_only:
        tools.insert(2, write_file)
    for t in tools:
        t.workspace = ws  # type: ignore[attr-defined]
    return tools
