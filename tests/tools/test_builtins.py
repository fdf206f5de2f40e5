"""Built-in tools: calculator, workspace files, time, python and shell runners."""
import os
import time

import pytest

from fmoe.tools.builtin_calculator import calculator
from fmoe.tools.builtin_files import workspace_tools
from fmoe.tools.builtin_python import python_tool
from fmoe.tools.builtin_shell import shell_tool
from fmoe.tools.builtin_time import current_time


@pytest.mark.parametrize("expr,want", [("2+2", "4"), ("7/2", "3.5"), ("7//2", "3"), ("2**10", "1024"),
                                       ("-(3 - 5) * 2", "4"), ("sqrt(16)", "4"), ("max(1, 5, 3)", "5"),
                                       ("round(2.567, 2)", "2.57"), ("10 % 3", "1"), ("abs(-2.5)", "2.5")])
def test_calculator_ok(expr, want):
    r = calculator.call({"expression": expr})
    assert not r.is_error and r.content == want


@pytest.mark.parametrize("expr,why", [("().__class__", "attribute"), ("__import__('os')", "not allowed"),
                                      ("x + 1", "unknown name"), ("9**9**9", "too large"),
                                      ("2**100000", "too large"), ("1/0", "division by zero"),
                                      ("'a' * 3", "only numbers"), ("1" + "+1" * 400, "too long"),
                                      ("lambda: 1", "not allowed"), ("[1, 2]", "not allowed")])
def test_calculator_refuses(expr, why):
    t0 = time.perf_counter()
    r = calculator.call({"expression": expr})
    assert r.is_error and why in r.content
    assert time.perf_counter() - t0 < 1


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "notes.txt").write_text("alpha\nbeta gamma\nGamma ray\n")
    (root / "sub").mkdir()
    (root / "sub" / "deep.md").write_text("# title\ngamma here\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret gamma\n")
    os.symlink(outside, root / "link_out.txt")
    os.symlink(tmp_path, root / "dir_out")
    tools = {t.name: t for t in workspace_tools(root, max_read=1000, max_write=1000)}
    return root, tools


def test_files_basic(ws):
    root, t = ws
    assert t["read_file"].call({"path": "notes.txt"}).content.startswith("alpha")
    r = t["write_file"].call({"path": "new/dir/out.txt", "content": "hello"})
    assert not r.is_error and (root / "new/dir/out.txt").read_text() == "hello"
    listing = t["list_files"].call({}).content
    assert "notes.txt" in listing and "sub/" in listing and "(outside the workspace)" in listing
    r = t["search_files"].call({"pattern": "gamma"})
    assert "notes.txt:2: beta gamma" in r.content and "sub/deep.md:2: gamma here" in r.content
    assert "secret" not in r.content
    r = t["search_files"].call({"pattern": "^[Gg]amma", "regex": True})
    assert "notes.txt:3: Gamma ray" in r.content
    assert t["read_file"].call({"path": str(root / "notes.txt")}).content.startswith("alpha")  # absolute inside


@pytest.mark.parametrize("path", ["../secret.txt", "sub/../../secret.txt", "link_out.txt", "dir_out/secret.txt",
                                  "/etc/passwd"])
def test_files_refuse_escape(ws, path):
    _, t = ws
    r = t["read_file"].call({"path": path})
    assert r.is_error and "outside the workspace" in r.content
    r = t["write_file"].call({"path": path, "content": "x"})
    assert r.is_error and "outside the workspace" in r.content


def test_files_size_limits(ws):
    root, t = ws
    (root / "big.txt").write_text("x" * 5000)
    assert "over the read limit" in t["read_file"].call({"path": "big.txt"}).content
    assert "over the write limit" in t["write_file"].call({"path": "w.txt", "content": "y" * 5000}).content
    assert not (root / "w.txt").exists()


def test_current_time():
    assert current_time.call({"timezone": "Europe/Paris"}).content[:2] == "20"
    r = current_time.call({"timezone": "Nowhere/Land"})
    assert r.is_error and "unknown timezone" in r.content


def test_shell_allowlist(tmp_path):
    sh = shell_tool(allow=["echo"], cwd=tmp_path, timeout=5)
    assert sh.call({"command": "echo hi there"}).content == "hi there"
    for cmd in ("rm -rf x", "/bin/echo hi", "sh -c 'echo hi'"):
        r = sh.call({"command": cmd})
        assert r.is_error and "not allowed" in r.content
    r = sh.call({"command": "echo a | cat"})
    assert r.is_error and "shell syntax" in r.content


def test_python_runner(tmp_path):
    py = python_tool(cwd=tmp_path, timeout=2)
    assert py.call({"code": "print(6 * 7)"}).content == "42"
    r = py.call({"code": "raise SystemExit(3)"})
    assert r.is_error and "exit code 3" in r.content
    t0 = time.perf_counter()
    r = py.call({"code": "while True: pass"})
    assert r.is_error and time.perf_counter() - t0 < 5
    r = py.call({"code": "x = bytearray(8 * 1024**3)"})
    assert r.is_error and "MemoryError" in r.content
