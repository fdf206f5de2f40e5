"""Run a program in a subprocess with a timeout, resource limits and an output cap (used by run_python/run_shell).

Rlimits (CPU seconds, address space, file size, no core dumps), a new session (the whole process group is killed
on timeout), a minimal environment, no shell; with ``Limits.confine_to`` (the shell tool) the program is confined by
Landlock to that folder (read/write) and the system folders (read-only). The limits are applied by a small wrapper
program that then execs the command (no ``preexec_fn``, which Python documents as deadlock-prone in a threaded
process); a limit that cannot be applied is reported in the output as ``[sandbox: ...]``. For run_python it is a
seat belt, not a jail.
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
    confine_to: str | None = None               # Landlock (Linux): the program may read/write only here (plus
                                                # read-only SYSTEM_DIRS); None: no kernel confinement
    require_confinement: bool = False           # refuse to run when Landlock cannot be applied


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


# The child runs this small Python program first (no preexec_fn: Python documents it as unsafe in a threaded
# process): it applies the resource limits and, when asked, Landlock, then execs the program. A limit that cannot be
# applied is reported on stderr (which the caller reads with stdout), never swallowed.
_WRAPPER = r"""
import ctypes, json, os, resource, sys
spec = json.loads(sys.argv[1]); argv = sys.argv[2:]
def note(msg):
    os.write(2, ("[sandbox: " + msg + "]\n").encode())
for name, value in spec["rlimits"]:
    which = getattr(resource, name)
    try:
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value if hard == resource.RLIM_INFINITY else hard))
    except Exception as e:
        note("could not set %s=%d: %s" % (name, value, e))
root = spec.get("landlock")
if root is not None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        if abi < 1:
            raise OSError(ctypes.get_errno(), "Landlock is not available: " + os.strerror(ctypes.get_errno()))
        handled = (1 << 13) - 1
        if abi >= 2: handled |= 1 << 13
        if abi >= 3: handled |= 1 << 14
        if abi >= 5: handled |= 1 << 15
        attr = (ctypes.c_uint64 * 1)(handled)
        rs = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
        if rs < 0:
            raise OSError(ctypes.get_errno(), "landlock_create_ruleset: " + os.strerror(ctypes.get_errno()))
        class Beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
        RX = 1 | 4 | 8
        FILE_BITS = 1 | 2 | 4 | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
        rules = [(p, RX) for p in spec["read_only"]] + [(root, handled)] + [(p, 2 | 4) for p in spec["devices"]]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            if not os.path.isdir(path):
                access &= FILE_BITS
            b = Beneath(access & handled, fd)
            if libc.syscall(445, rs, 1, ctypes.byref(b), ctypes.c_uint32(0)) != 0:
                raise OSError(ctypes.get_errno(), "landlock_add_rule %s: %s" % (path, os.strerror(ctypes.get_errno())))
            os.close(fd)
        if libc.prctl(38, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
        if libc.syscall(446, rs, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self: " + os.strerror(ctypes.get_errno()))
    except OSError as e:
        note("no kernel confinement (%s); only the argument checks apply" % (e.strerror or e))
        if spec.get("require_landlock"):
            sys.exit(126)
try:
    os.execv(argv[0], argv)
except OSError as e:
    note("cannot run %s: %s" % (argv[0], e.strerror or e))
    sys.exit(127)
"""

# Read-only (read + execute) places a confined program needs: its binary and shared libraries.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0 when not available: not Linux, or disabled)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return max(0, int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))))
    except (OSError, AttributeError):
        return 0


def _wrapped(argv: list[str], limits: Limits) -> list[str]:
    import json
    import sys

    spec: dict = {"rlimits": [("RLIMIT_CPU", int(limits.cpu_s)), ("RLIMIT_AS", int(limits.memory_bytes)),
                              ("RLIMIT_FSIZE", int(limits.file_bytes)), ("RLIMIT_CORE", 0)]}
    if limits.confine_to is not None:
        spec.update(landlock=str(limits.confine_to), read_only=list(SYSTEM_DIRS) + [os.path.dirname(argv[0])],
                    devices=["/dev/null", "/dev/zero", "/dev/urandom"], require_landlock=limits.require_confinement)
    return [sys.executable, "-I", "-S", "-c", _WRAPPER, json.dumps(spec), *argv]


def minimal_env(extra: dict[str, str] | None = None, home: str | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if home:
        env["HOME"] = home
    env.update(extra or {})
    return env


def run_limited(argv: list[str], *, cwd: str | None, limits: Limits) -> RunResult:
    proc = subprocess.Popen(_wrapped(argv, limits), cwd=cwd, env=minimal_env(limits.env, home=cwd),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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
