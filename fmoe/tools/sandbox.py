"""Run a program in a subprocess with a timeout, resource limits and an output cap (used by run_python/run_shell).

Not a security boundary: rlimits (CPU seconds, address space, file size, no core dumps), a new session (the whole
process group is killed on timeout), a minimal environment, no shell. Treat it as a seat belt, not a jail.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field

from fmoe.tools.base import human_size


@dataclass
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1024 * 1024 * 1024      # RLIMIT_AS
    file_bytes: int = 16 * 1024 * 1024          # RLIMIT_FSIZE
    max_output: int = 64 * 1024                 # bytes of stdout+stderr kept
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    returncode: int | None
    output: str
    truncated: bool
    timed_out: bool

    @property
    def ok(self) -> bool:
        # a run we cut short for printing too much still produced its (first) output: not an error
        return (self.returncode == 0 or self.truncated) and not self.timed_out

    def report(self) -> str:
        text = self.output
        notes = []
        if self.timed_out:
            notes.append("[timed out: killed]")
        elif self.truncated:
            pass  # killed by us for printing too much; the text already says where it was cut
        elif self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            notes.append(f"[killed by signal {name}]")
        elif self.returncode:
            notes.append(f"[exit code {self.returncode}]")
        if not text.strip() and not notes:
            return "(no output)"
        return "\n".join([text.rstrip("\n")] + notes if text else notes)


def _preexec(limits: Limits):
    def apply() -> None:  # runs in the child between fork and exec
        import resource

        def setlim(which: int, value: int) -> None:
            try:
                soft, hard = resource.getrlimit(which)
                if hard != resource.RLIM_INFINITY:
                    value = min(value, hard)
                resource.setrlimit(which, (value, hard if hard != resource.RLIM_INFINITY else value))
            except (ValueError, OSError):
                pass

        setlim(resource.RLIMIT_CPU, int(limits.cpu_s))
        setlim(resource.RLIMIT_AS, int(limits.memory_bytes))
        setlim(resource.RLIMIT_FSIZE, int(limits.file_bytes))
        setlim(resource.RLIMIT_CORE, 0)
    return apply


def minimal_env(extra: dict[str, str] | None = None, home: str | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if home:
        env["HOME"] = home
    env.update(extra or {})
    return env


def run_limited(argv: list[str], *, cwd: str | None, limits: Limits) -> RunResult:
    proc = subprocess.Popen(argv, cwd=cwd, env=minimal_env(limits.env, home=cwd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_preexec(limits),
                            start_new_session=True, close_fds=True)
    buf = bytearray()
    state = {"truncated": False}

    def kill_group() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def reader() -> None:
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            room = limits.max_output - len(buf)
            if room > 0:
                buf.extend(chunk[:room])
            if len(chunk) > room:
                state["truncated"] = True
                kill_group()  # enough output: stop the producer instead of draining gigabytes

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group()
        proc.wait()
    kill_group()  # leftovers of the group (background children)
    t.join(timeout=2)
    text = buf.decode("utf-8", errors="replace")
    if state["truncated"]:
        text += f"\n…[output cut at {human_size(limits.max_output)}]"
    return RunResult(proc.returncode, text, state["truncated"], timed_out)
