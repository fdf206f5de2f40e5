"""The ctypes mirror of the CUDA kernels' argument struct (``cuda_qmv._Args``) against the C layout of ``QmvArgs`` in
fmoe/kernels/cuda_qmv.cu, as a host C++ compiler lays it out (the kernels take it by value, so a field out of place
would hand every kernel wrong pointers). No GPU needed: the struct and its typedefs are cut from the .cu file and
compiled for the host; skipped where no C++ compiler exists."""
import ctypes
import re
import shutil
import subprocess

import pytest

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
def test_ctypes_args_match_the_kernels_struct(tmp_path):
    from fmoe.kernels import cuda_qmv, nvrtc

    src = nvrtc.source_file("cuda_qmv.cu").read_text()
    typedefs = "\n".join(re.findall(r"^typedef [^;]+;", src, flags=re.M))
    struct = re.search(r"^struct QmvArgs \{.*?^\};", src, flags=re.M | re.S).group(0)
    names = [f[0] for f in cuda_qmv._Args._fields_]
    prints = "\n".join(f'    std::printf("{n} %zu\\n", offsetof(QmvArgs, {n}));' for n in names)
    size = '    std::printf("size %zu\\n", sizeof(QmvArgs));'
    (tmp_path / "layout.cpp").write_text(f"#include <cstddef>\n#include <cstdio>\n{typedefs}\n{struct}\n"
                                         f"int main() {{\n{prints}\n{size}\n}}\n")
    subprocess.run([CXX, "-std=c++17", str(tmp_path / "layout.cpp"), "-o", str(tmp_path / "layout")], check=True)
    out = dict(line.split() for line in subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True,
                                                       check=True).stdout.splitlines())
    assert {n: int(out[n]) for n in names} == {n: getattr(cuda_qmv._Args, n).offset for n in names}
    assert int(out["size"]) == ctypes.sizeof(cuda_qmv._Args)
    c_fields = re.findall(r"^\s+[\w\s\*]+?\b(\w+);", struct.split("{", 1)[1], flags=re.M)
    assert c_fields == names                     # every field of the struct, in order, and no other
