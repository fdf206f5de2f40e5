"""Where a CPU decode token's time goes outside the native kernels: cProfile over decoded tokens of a checkpoint
(warm in RAM), the functions with the most own time, per token, beside the token time and the kernels' share
(``torch_qlinear.profile``). For the 16-core host, where 12-15 ms of a 12-layer token are outside the kernels
(bench/results/cpu_h200_host/summary.md, session 14).

    python3 bench/device/cpu_decode_profile.py MODEL_DIR [--tokens 12] [--warm 8] [--top 30]
"""
import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fmoe.bench.decode import load_warm  # noqa: E402
from fmoe.engine.generate import Generation  # noqa: E402
from fmoe.kernels import native, torch_qlinear  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--warm", type=int, default=8)
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    m, prompt, _, _ = load_warm(Path(a.model), a.warm)
    it = iter(Generation(m, prompt, max_tokens=a.tokens + 1))
    next(it)                                   # the prefill's token
    torch_qlinear.profile(True)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(a.tokens):
        next(it)
    prof.disable()
    wall = (time.perf_counter() - t0) / a.tokens * 1e3
    k = torch_qlinear.profile(False)
    kern = k["kernel_s"] / a.tokens * 1e3
    print(f"{a.model}: {native.threads()} threads, kernel {native.kernel_isa()}; per token {wall:.2f} ms under "
          f"cProfile, native kernels {kern:.2f} ms ({k['calls'] / a.tokens:.0f} calls), the rest {wall - kern:.2f} ms")
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[: a.top]
    print(f"{'us/token own':>13} {'calls/token':>11}  function")
    for (file, line, name), (cc, nc, tt, ct, _) in rows:
        print(f"{tt / a.tokens * 1e6:13.1f} {nc / a.tokens:11.1f}  {Path(file).name}:{line}({name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
