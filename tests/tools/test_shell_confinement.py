"""Issue #16 items 6-7: the shell tool cannot read or write outside its workspace (argument checks, and Landlock
where the kernel offers it); no preexec_fn; a limit that cannot be applied is reported."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fmoe.tools import sandbox
from fmoe.tools.builtin_shell import shell_tool
from fmoe.tools.sandbox import Limits, landlock_abi, run_limited

ESCAPES = [
    "cat /etc/passwd",
    "grep -r x /",
    "grep -r root /etc",
    "sort -o /tmp/fmoe-escape-sort notes.txt",
    "sort --output=/tmp/fmoe-escape-sort notes.txt",
    "sort --out /tmp/fmoe-escape-sort notes.txt",
    "sort -uo /tmp/fmoe-escape-sort notes.txt",
    "uniq notes.txt out.txt",
    "cat ../outside.txt",
    "cat sub/../../outside.txt",
    "head -n 1 /etc/hostname",
    "tail /etc/passwd",
    "wc -l /etc/passwd",
    "cut -d: -f1 /etc/passwd",
    "ls /",
    "ls -la ..",
    "grep -f/etc/passwd notes.txt",
    "grep --file=/etc/passwd notes.txt",
    "cat link_out",                  # a symlink inside the workspace that points outside
    "cat linkdir/passwd",            # a symlinked directory
    "grep -R root linkdir",
    "sort -T /tmp notes.txt",
    "sort --compress-program=sh notes.txt",
    "ls -L linkdir",
    "wc --files0-from=/etc/passwd",
]


@pytest.fixture()
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "notes.txt").write_text("b\na\na\n")
    (root / "sub").mkdir()
    (tmp_path / "outside.txt").write_text("secret\n")
    os.symlink("/etc/passwd", root / "link_out")
    os.symlink("/etc", root / "linkdir")
    return root


@pytest.mark.parametrize("confine", [True, False], ids=["landlock", "arguments-only"])
@pytest.mark.parametrize("command", ESCAPES)
def test_shell_escapes_are_refused(ws, command, confine, monkeypatch):
    """Every escape is refused with kernel confinement (where the kernel has Landlock) and by the argument checks
    alone (confine=False: what protects the workspace where Landlock is missing, e.g. macOS): then the program never
    runs at all."""
    import fmoe.tools.builtin_shell as builtin_shell

    ran = []
    real = builtin_shell.run_limited

    def spy(argv, **kw):
        ran.append(argv)
        return real(argv, **kw)

    monkeypatch.setattr(builtin_shell, "run_limited", spy)
    sh = shell_tool(cwd=ws, timeout=5, confine=confine)
    r = sh.call({"command": command})
    assert r.is_error, (command, r.content)
    if not confine:
        assert ran == [], (command, r.content)   # refused before anything ran
    assert "root:" not in r.content and "secret" not in r.content
    assert not os.path.exists("/tmp/fmoe-escape-sort")
    assert not (ws / "out.txt").exists()


@pytest.mark.parametrize("confine", [True, False], ids=["landlock", "arguments-only"])
def test_shell_inside_the_workspace_still_works(ws, confine):
    sh = shell_tool(cwd=ws, timeout=5, confine=confine)
    assert sh.call({"command": "sort notes.txt"}).content.split() == ["a", "a", "b"]
    assert sh.call({"command": "uniq notes.txt"}).content.split() == ["b", "a"]
    assert "notes.txt" in sh.call({"command": "grep -r a ."}).content
    assert sh.call({"command": "cat sub/../notes.txt"}).content.split() == ["b", "a", "a"]
    assert sh.call({"command": "echo /etc/passwd"}).content.strip() == "/etc/passwd"


@pytest.mark.skipif(landlock_abi() < 1, reason="no Landlock in this kernel")
def test_landlock_confines_what_the_argument_check_cannot_see(tmp_path):
    """Kernel confinement alone (the program is given an absolute path outside by the runner itself)."""
    ws = tmp_path / "w"
    ws.mkdir()
    r = run_limited(["/bin/cat", "/etc/passwd"], cwd=str(ws), limits=Limits(confine_to=str(ws)))
    assert r.returncode != 0 and "root:" not in r.output and "Permission denied" in r.output
    r = run_limited(["/usr/bin/touch", str(tmp_path / "x")], cwd=str(ws), limits=Limits(confine_to=str(ws)))
    assert r.returncode != 0 and not (tmp_path / "x").exists()
    r = run_limited(["/usr/bin/touch", "y"], cwd=str(ws), limits=Limits(confine_to=str(ws)))
    assert r.returncode == 0 and (ws / "y").exists()


def test_no_preexec_fn(monkeypatch, tmp_path):
    seen = {}
    real = subprocess.Popen

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(sandbox.subprocess, "Popen", spy)
    r = run_limited([sys.executable, "-c", "print('hi')"], cwd=str(tmp_path), limits=Limits())
    assert r.ok and "hi" in r.output
    assert seen.get("preexec_fn") is None and seen.get("start_new_session") is True


def test_limits_are_applied_and_failures_reported(tmp_path):
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_CPU)[0], resource.getrlimit(resource.RLIMIT_FSIZE)[0])"
    r = run_limited([sys.executable, "-c", code], cwd=str(tmp_path), limits=Limits(cpu_s=7, file_bytes=12345))
    assert r.output.split() == ["7", "12345"]
    # a limit setrlimit refuses is reported in the output (before: swallowed in the preexec_fn)
    r = run_limited([sys.executable, "-c", "print('ran')"], cwd=str(tmp_path), limits=Limits(file_bytes=2 ** 70))
    assert "[sandbox: could not set RLIMIT_FSIZE" in r.output and "ran" in r.output


def test_timed_out_sync_tool_is_counted_and_reported():
    """Issue #16 item 8: a synchronous tool that times out keeps a thread running (Python cannot kill it): it is
    counted and listed, not left unnoticed."""
    import threading
    import time

    from fmoe.tools.decorator import abandoned_tool_threads, tool

    release = threading.Event()

    @tool(timeout=0.2)
    def stuck() -> str:
        """Never returns in time."""
        release.wait(10)
        return "late"

    before = abandoned_tool_threads()["total"]
    r = stuck.call({})
    assert r.is_error and "timed out" in r.content
    info = abandoned_tool_threads()
    assert info["total"] == before + 1
    assert any(x["tool"] == "stuck" for x in info["running"])
    release.set()
    for _ in range(50):
        if not any(x["tool"] == "stuck" for x in abandoned_tool_threads()["running"]):
            break
        time.sleep(0.02)
    assert not any(x["tool"] == "stuck" for x in abandoned_tool_threads()["running"])
