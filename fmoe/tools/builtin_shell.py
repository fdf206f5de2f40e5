"""Built-in ``run_shell`` (off unless enabled): run one allowlisted program, without a shell.

    t = shell_tool(allow=["ls", "cat", "grep", "wc"], cwd="workspace")

The command line is split with shlex (no shell: no pipes, redirections, globbing, variables or command
substitution); its first word must be a bare program name in the allowlist, found on PATH. The program runs with
the same limits as run_python (timeout, CPU, memory, file size, output cap). Programs that run other programs
(sh, bash, env, xargs, find -exec, python ...) defeat an allowlist: don't allow them unless you mean it.
"""
from __future__ import annotations

import os
import shlex
import shutil

from fmoe.errors import ToolDefinitionError, ToolFailed
from fmoe.tools.base import Tool
from fmoe.tools.decorator import tool
from fmoe.tools.sandbox import Limits, minimal_env, run_limited

DEFAULT_ALLOW = ("ls", "cat", "head", "tail", "wc", "grep", "echo", "pwd", "date", "sort", "uniq", "cut")
_SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<", "2>", "2>&1", "&>", "(", ")"}
MAX_COMMAND_CHARS = 10_000


def shell_tool(allow: list[str] | tuple[str, ...] = DEFAULT_ALLOW, *, cwd: str | os.PathLike | None = None,
               timeout: float = 10.0, cpu_seconds: int | None = None, memory_mb: int = 1024,
               max_file_mb: int = 16, max_output: int = 64 * 1024) -> Tool:
    allowed = tuple(dict.fromkeys(allow))
    for name in allowed:
        if not name or "/" in name or name != name.strip():
            raise ToolDefinitionError(f"shell allowlist entries are bare program names, got {name!r}")
    limits = Limits(timeout_s=timeout, cpu_s=cpu_seconds or max(1, int(timeout) + 1),
                    memory_bytes=memory_mb * 1024 * 1024, file_bytes=max_file_mb * 1024 * 1024,
                    max_output=max_output)
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
        exe = shutil.which(prog, path=path_env)
        if exe is None:
            raise ToolFailed(f"program {prog!r} is not installed")
        res = run_limited([exe, *argv[1:]], cwd=str(cwd) if cwd is not None else None, limits=limits)
        if not res.ok:
            raise ToolFailed(res.report())
        return res.report()

    run_shell.allow = allowed  # type: ignore[attr-defined]
    return run_shell
