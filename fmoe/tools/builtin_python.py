"""Built-in ``run_python`` (off unless enabled): run a Python snippet in a resource-limited subprocess.

    t = python_tool(cwd="workspace", timeout=10, memory_mb=1024)

The code runs as ``python -I -c CODE`` (isolated mode) in ``cwd`` (a fresh temporary directory if None) with
rlimits on CPU time, address space and file size, a minimal environment and a wall-clock timeout that kills the
whole process group. Not a security sandbox: enable it only for code you would run yourself.
"""
from __future__ import annotations

import os
import sys
import tempfile

from fmoe.errors import ToolFailed
from fmoe.tools.base import Tool
from fmoe.tools.decorator import tool
from fmoe.tools.sandbox import Limits, run_limited

MAX_CODE_CHARS = 100_000


def python_tool(*, cwd: str | os.PathLike | None = None, timeout: float = 10.0, cpu_seconds: int | None = None,
                memory_mb: int = 1024, max_file_mb: int = 16, max_output: int = 64 * 1024,
                python: str | None = None) -> Tool:
    limits = Limits(timeout_s=timeout, cpu_s=cpu_seconds or max(1, int(timeout) + 1),
                    memory_bytes=memory_mb * 1024 * 1024, file_bytes=max_file_mb * 1024 * 1024,
                    max_output=max_output)
    exe = python or sys.executable

    @tool(timeout=timeout + 5)
    def run_python(code: str) -> str:
        """Run a Python 3 program and return what it prints (stdout and stderr).

        Use print() to show results. No network access should be assumed; each run starts fresh.

        Args:
            code: The complete Python program to run.
        """
        if len(code) > MAX_CODE_CHARS:
            raise ToolFailed(f"code too long ({len(code)} > {MAX_CODE_CHARS} characters)")
        if "\x00" in code:
            raise ToolFailed("code contains a NUL character")
        if cwd is None:
            with tempfile.TemporaryDirectory(prefix="fmoe-python-") as tmp:
                res = run_limited([exe, "-I", "-c", code], cwd=tmp, limits=limits)
        else:
            res = run_limited([exe, "-I", "-c", code], cwd=str(cwd), limits=limits)
        if not res.ok:
            raise ToolFailed(res.report())
        return res.report()

    return run_python
