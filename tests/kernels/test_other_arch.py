"""The native kernel (fmoe/kernels/qmv.cpp) built for aarch64 with a cross compiler and run under qemu-user: its
generic variant (the only one on ARM: portable C++, with NEON row products at every width) against a
double-precision reference, with no Python on the emulated side (tests/kernels/data/qmv_check.cpp). Skipped where the
tools are missing; on Debian: ``apt-get install g++-aarch64-linux-gnu qemu-user``. This checks results, not speed (an
emulator's timings mean nothing)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CXX, QEMU = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (CXX and QEMU), reason="no aarch64 cross compiler or qemu-aarch64")
def test_qmv_and_dequant_on_aarch64(tmp_path):
    from fmoe.kernels import native

    flags = [f for f in native._BASE_FLAGS if f not in ("-shared", "-fPIC")]   # the flags of the generic variant
    kernel = tmp_path / "qmv.o"
    subprocess.run([CXX, *flags, "-c", str(ROOT / "fmoe/kernels/qmv.cpp"), "-o", str(kernel)], check=True)
    # the driver at -O1: GCC 12's aarch64 vectorizer crashes on it at -O2 (an internal compiler error)
    driver = tmp_path / "check.o"
    subprocess.run([CXX, "-O1", "-std=c++17", "-c", str(ROOT / "tests/kernels/data/qmv_check.cpp"), "-o", str(driver)],
                   check=True)
    exe = tmp_path / "qmv_check"
    subprocess.run([CXX, "-static", "-pthread", str(kernel), str(driver), "-o", str(exe)], check=True)
    out = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().startswith("ok "), out.stdout[-2000:]
    assert int(out.stdout.split()[-1]) == 468 + 144    # every (bits, group, scale dtype, rows, threads, mode) ran,
                                                       # and every fused (bits, group, scale dtype, threads, accumulate)
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:                                        # the NEON row products are in the object (vector FMAs)
        asm = subprocess.run([objdump, "-d", str(kernel)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"fmla\s+v\d+\.4s", asm) and re.search(r"ucvtf\s+v\d+\.4s", asm)
