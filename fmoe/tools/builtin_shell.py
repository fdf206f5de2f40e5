"""Built-in ``run_shell`` (off unless enabled): run one allowlisted program, without a shell.

    t = shell_tool(allow=["ls", "cat", "grep", "wc"], cwd="workspace")

The command line is split with shlex (no shell: no pipes, redirections, globbing, variables or command
substitution); its first word must be a bare program name in the allowlist, found on PATH. The program runs with
the same limits as run_python (timeout, CPU, memory, file size, output cap), in the workspace ``cwd``, and cannot
read or write outside it: every path-like argument must resolve (symlinks followed) inside the workspace, options
that write files or follow links out of it (``sort -o``, ``uniq IN OUT``, ``grep -R``, ...) are refused, and on
Linux the program is confined by Landlock to the workspace (read/write) and the system folders (read-only). Programs that run other programs
(sh, bash, env, xargs, find -exec, python ...) defeat an allowlist: don't allow them unless you mean it.
"""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from fmoe.errors import ToolDefinitionError, ToolFailed
from fmoe.tools.base import Tool
from fmoe.tools.decorator import tool
from fmoe.tools.sandbox import Limits, minimal_env, run_limited

DEFAULT_ALLOW = ("ls", "cat", "head", "tail", "wc", "grep", "echo", "pwd", "date", "sort", "uniq", "cut")
# Options that write files, run programs or follow links out of the workspace: (short letters, long names). GNU
# long options may be abbreviated, so any prefix (3+ characters) of a long name here is refused too.
FORBIDDEN_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sort": ("oT", ("--output", "--temporary-directory", "--compress-program", "--files0-from")),
    "grep": ("R", ("--dereference-recursive",)),
    "ls": ("L", ("--dereference",)),
    "wc": ("", ("--files0-from",)),
    "date": ("s", ("--set",)),
    "tail": ("fF", ("--follow",)),
}
# Programs whose extra positional argument is an output file: the most positional arguments they may have.
MAX_OPERANDS = {"uniq": 1}
_SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<", "2>", "2>&1", "&>", "(", ")"}
MAX_COMMAND_CHARS = 10_000


def shell_tool(allow: list[str] | tuple[str, ...] = DEFAULT_ALLOW, *, cwd: str | os.PathLike | None = None,
               timeout: float = 10.0, cpu_seconds: int | None = None, memory_mb: int = 1024,
               max_file_mb: int = 16, max_output: int = 64 * 1024, confine: bool = True) -> Tool:
    allowed = tuple(dict.fromkeys(allow))
    for name in allowed:
        if not name or "/" in name or name != name.strip():
            raise ToolDefinitionError(f"shell allowlist entries are bare program names, got {name!r}")
    root = Path(cwd if cwd is not None else os.getcwd()).resolve()
    if not root.is_dir():
        raise ToolDefinitionError(f"shell workspace is not a directory: {root}")
    limits = Limits(timeout_s=timeout, cpu_s=cpu_seconds or max(1, int(timeout) + 1),
                    memory_bytes=memory_mb * 1024 * 1024, file_bytes=max_file_mb * 1024 * 1024,
                    max_output=max_output, confine_to=str(root) if confine else None)
    path_env = minimal_env()["PATH"]

    @tool(timeout=timeout + 5)
    def run_shell(command: str) -> str:
        """Run one command (a program and its arguments; no pipes, redirections or globbing) and return its output.

        Args:
            command: The command line, e.g. "wc -l notes.txt".
        """
        if len(command) > MAX_COMMAND_CHARS:
            raise ToolFailed(f"command too long ({len(command)} > {MAX_COMMAND_CHARS} characters)")
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise ToolFailed(f"cannot parse the command: {e}") from None
        if not argv:
            raise ToolFailed("empty command")
        ops = [a for a in argv if a in _SHELL_OPERATORS or a.startswith(("$(", "`"))]
        if ops:
            raise ToolFailed(f"shell syntax is not supported ({ops[0]!r}): run one program with its arguments")
        prog = argv[0]
        if "/" in prog or prog not in allowed:
            raise ToolFailed(f"program {prog!r} is not allowed (allowed: {', '.join(allowed) or 'none'})")
        check_arguments(prog, argv[1:], root)
        exe = shutil.which(prog, path=path_env)
        if exe is None:
            raise ToolFailed(f"program {prog!r} is not installed")
        res = run_limited([exe, *argv[1:]], cwd=str(root), limits=limits)
        if not res.ok:
            raise ToolFailed(res.report())
        return res.report()

    run_shell.allow = allowed  # type: ignore[attr-defined]
    run_shell.workspace = root  # type: ignore[attr-defined]
    return run_shell


def _inside(arg: str, root: Path) -> bool:
    p = Path(arg) if os.path.isabs(arg) else root / arg
    try:
        p.resolve().relative_to(root)     # symlinks resolved: a link inside pointing outside is outside
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def check_arguments(prog: str, args: list[str], root: Path) -> None:
    """ToolFailed unless every path-like argument stays in ``root`` (after resolving symlinks) and no option
    writes a file, runs a program or follows links out of it. The kernel confinement (Landlock) stands behind this
    where the OS offers it; this check is what holds where it does not."""
    if prog == "echo":          # prints its arguments, opens nothing
        return
    shorts, longs = FORBIDDEN_OPTIONS.get(prog, ("", ()))
    operands = 0
    only_operands = False
    for a in args:
        if a == "--" and not only_operands:
            only_operands = True
            continue
        if a.startswith("--") and not only_operands:
            name, eq, value = a.partition("=")
            if any(f.startswith(name) for f in longs if len(name) >= 3) or name in longs:
                raise ToolFailed(f"option {name!r} of {prog} is not allowed here (it writes files, runs programs "
                                 f"or follows links outside the workspace)")
            if eq and value and not _inside(value, root):
                raise ToolFailed(f"path {value!r} is outside the workspace")
            continue
        if a.startswith("-") and len(a) > 1 and not only_operands:
            bad = next((c for c in a[1:] if c in shorts), None)
            if bad is not None:
                raise ToolFailed(f"option '-{bad}' of {prog} is not allowed here (it writes files, runs programs "
                                 f"or follows links outside the workspace)")
            cut = min((a.find(c) for c in ("/", ".", "~") if c in a[1:]), default=-1)
            if cut > 0 and not _inside(a[cut:], root):      # an attached value: -f/etc/passwd
                raise ToolFailed(f"path {a[cut:]!r} is outside the workspace")
            continue
        operands += 1
        if not _inside(a, root):
            raise ToolFailed(f"path {a!r} is outside the workspace")
    most = MAX_OPERANDS.get(prog)
    if most is not None and operands > most:
        raise ToolFailed(f"{prog} takes at most {most} file argument(s) here (another one would be written)")
